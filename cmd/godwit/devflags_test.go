package main

import (
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/vmm"
)

func TestParseDiskFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vmm.DiskConfig
		err  string
	}{
		{in: "path=a.img", want: vmm.DiskConfig{Path: "a.img"}},
		{in: "path=/x/b.qcow2,format=qcow2,readonly=on,serial=disk-1",
			want: vmm.DiskConfig{Path: "/x/b.qcow2", Format: "qcow2", ReadOnly: true, Serial: "disk-1"}},
		{in: "path=c.img,format=raw,ro", want: vmm.DiskConfig{Path: "c.img", Format: "raw", ReadOnly: true}},
		{in: "path=c.img,readonly=off", want: vmm.DiskConfig{Path: "c.img"}},
		{in: "serial=s", err: "path=FILE is required"},
		{in: "path=a.img,format=vmdk", err: `invalid format="vmdk"`},
		{in: "path=a.img,readonly=maybe", err: `invalid readonly="maybe"`},
		{in: "path=a.img,serial=123456789012345678901", err: "longer than 20 bytes"},
		{in: "path=a.img,cache=none", err: `unknown key "cache"`},
		{in: "path=a.img,,ro", err: "empty option"},
	} {
		got, err := parseDiskFlag(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseNetFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want vmm.NetConfig
		err  string
	}{
		{in: "tap=tap0", want: vmm.NetConfig{Tap: "tap0"}},
		{in: "bridge=br0,mac=52:54:00:AB:cd:01", want: vmm.NetConfig{Bridge: "br0", MAC: "52:54:00:ab:cd:01"}},
		{in: "tap=vm1,bridge=br0", want: vmm.NetConfig{Tap: "vm1", Bridge: "br0"}},
		{in: "mac=52:54:00:00:00:01", err: "give tap=NAME or bridge=BR"},
		{in: "tap=t,mac=52:54:00:zz:00:01", err: `invalid mac="52:54:00:zz:00:01"`},
		{in: "tap=t,mac=52:54:00:00:01", err: "invalid mac"},
		{in: "tap=t,mac=01:00:5e:00:00:01", err: "multicast"},
		{in: "tap=t,vhost=on", err: `unknown key "vhost"`},
		{in: "fd=abc", err: `invalid fd="abc": want the number of an open TAP file descriptor`},
		{in: "bridge=br0,fd=-1", err: `invalid fd="-1"`},
		{in: "fd=1", err: "invalid fd=1: that is stdin, stdout or stderr"},
		{in: "fd=987654", err: "fd=987654 is not an open file descriptor of godwit (bad file descriptor)"},
		{in: "fd=", err: `invalid fd=""`},
	} {
		got, err := parseNetFlag(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// TestParseNetFD: fd=N wraps this process's open descriptor N as the
// NIC's TAP, with tap= or bridge= beside it or alone; one descriptor
// serves one NIC; godwit vm create refuses fd= (godwitd opens TAPs).
func TestParseNetFD(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A descriptor of its own for the parsed NIC's file to own.
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	n := strconv.Itoa(fd)
	nets, err := parseNetFlags([]string{"bridge=br0,fd=" + n + ",mac=52:54:00:00:00:07", "user"})
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 2 || nets[0].Bridge != "br0" || nets[0].MAC != "52:54:00:00:00:07" || nets[0].TapFile == nil ||
		int(nets[0].TapFile.Fd()) != fd || nets[0].TapFile.Name() != "fd "+n || nets[1].User == nil {
		t.Fatalf("parsed %+v", nets)
	}
	nets[0].TapFile.Close()
	if _, err := parseNetFlags([]string{"fd=" + strconv.Itoa(int(f.Fd())), "tap=x,fd=" + strconv.Itoa(int(f.Fd()))}); err == nil ||
		!strings.Contains(err.Error(), "is given for two NICs") {
		t.Errorf("one descriptor for two NICs: %v", err)
	}
	nc, fdn, err := parseNetSpec("fd=7")
	if err != nil || fdn != 7 || nc.TapFile != nil {
		t.Errorf("parseNetSpec fd=7: %+v, %d, %v", nc, fdn, err)
	}
	if _, fdn, err := parseNetSpec("tap=t0"); err != nil || fdn != -1 {
		t.Errorf("parseNetSpec tap=t0: fd %d, %v", fdn, err)
	}
	out, err := godwit(t, "", "vm", "--socket", "/nonexistent/godwitd.sock", "create", "x", "--kernel", "/k", "--net", "bridge=br0,fd=3").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "fd= is for godwit run and restore") {
		t.Errorf("vm create --net ...,fd=3: %v\n%s", err, out)
	}
}
