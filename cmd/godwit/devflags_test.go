package main

import (
	"reflect"
	"strings"
	"testing"

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
