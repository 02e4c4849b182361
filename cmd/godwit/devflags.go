package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/vmm"
)

// parseKeyValues splits "a=1,b=2,flag" into ordered key/value pairs.
func parseKeyValues(s string) ([][2]string, error) {
	var kv [][2]string
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			return nil, fmt.Errorf("empty option in %q", s)
		}
		k, v, _ := strings.Cut(part, "=")
		kv = append(kv, [2]string{k, v})
	}
	return kv, nil
}

func onOff(key, v string) (bool, error) {
	switch v {
	case "on", "true", "yes", "1", "":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("invalid %s=%q: use on or off", key, v)
}

// parseDiskFlag parses --disk path=FILE[,format=F][,readonly=on][,serial=S].
func parseDiskFlag(s string) (vmm.DiskConfig, error) {
	var d vmm.DiskConfig
	kv, err := parseKeyValues(s)
	if err != nil {
		return d, fmt.Errorf("--disk: %w", err)
	}
	for _, p := range kv {
		switch p[0] {
		case "path":
			d.Path = p[1]
		case "format":
			if p[1] != "raw" && p[1] != "qcow2" {
				return d, fmt.Errorf("--disk: invalid format=%q: use raw or qcow2", p[1])
			}
			d.Format = p[1]
		case "readonly", "ro":
			if d.ReadOnly, err = onOff(p[0], p[1]); err != nil {
				return d, fmt.Errorf("--disk: %w", err)
			}
		case "serial":
			if len(p[1]) > 20 {
				return d, fmt.Errorf("--disk: serial=%q is longer than 20 bytes", p[1])
			}
			d.Serial = p[1]
		default:
			return d, fmt.Errorf("--disk: unknown key %q (known: path, format, readonly, serial)", p[0])
		}
	}
	if d.Path == "" {
		return d, fmt.Errorf("--disk %q: path=FILE is required", s)
	}
	return d, nil
}

// parseNetFlag parses --net tap=NAME[,mac=M], bridge=BR[,mac=M],
// fd=N[,tap=NAME|bridge=BR][,mac=M] or user[,...]. fd=N makes TapFile
// this process's open descriptor N (checked to be open; FromFile checks
// that it is a TAP when the VM is built).
func parseNetFlag(s string) (vmm.NetConfig, error) {
	n, fd, err := parseNetSpec(s)
	if err != nil || fd < 0 {
		return n, err
	}
	if err := checkNetFD(fd); err != nil {
		return n, err
	}
	n.TapFile = os.NewFile(uintptr(fd), "fd "+strconv.Itoa(fd))
	return n, nil
}

// checkNetFD checks that descriptor fd is open in this process.
func checkNetFD(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("--net: fd=%d is not an open file descriptor of godwit (%v): pass the TAP's descriptor to godwit as that number", fd, err)
	}
	return nil
}

// parseNetFlags parses --net values in order; one descriptor serves one
// NIC. Every value is checked before any descriptor is wrapped in an
// *os.File: a file dropped on an error would close its descriptor when
// collected, whoever uses that number by then.
func parseNetFlags(flags []string) ([]vmm.NetConfig, error) {
	fds := map[int]bool{}
	for _, s := range flags {
		_, fd, err := parseNetSpec(s)
		if err != nil {
			return nil, err
		}
		if fd < 0 {
			continue
		}
		if fds[fd] {
			return nil, fmt.Errorf("--net: fd=%d is given for two NICs: each NIC needs a TAP descriptor of its own", fd)
		}
		fds[fd] = true
		if err := checkNetFD(fd); err != nil {
			return nil, err
		}
	}
	var nets []vmm.NetConfig
	for _, s := range flags {
		nc, err := parseNetFlag(s)
		if err != nil {
			return nil, err
		}
		nets = append(nets, nc)
	}
	return nets, nil
}

// parseNetSpec parses a --net value; fd is fd=N's number, -1 without.
func parseNetSpec(s string) (n vmm.NetConfig, fd int, err error) {
	fd = -1
	if s == "user" || strings.HasPrefix(s, "user,") {
		u, err := parseUserNetFlag(strings.TrimPrefix(strings.TrimPrefix(s, "user"), ","))
		if err != nil {
			return n, fd, fmt.Errorf("--net user: %w", err)
		}
		n.User = u
		return n, fd, nil
	}
	kv, err := parseKeyValues(s)
	if err != nil {
		return n, fd, fmt.Errorf("--net: %w", err)
	}
	for _, p := range kv {
		switch p[0] {
		case "tap":
			n.Tap = p[1]
		case "bridge":
			n.Bridge = p[1]
		case "fd":
			v, err := strconv.Atoi(p[1])
			if err != nil || v < 0 || v > 1<<20 {
				return n, -1, fmt.Errorf("--net: invalid fd=%q: want the number of an open TAP file descriptor, such as 3", p[1])
			}
			if v < 3 {
				return n, -1, fmt.Errorf("--net: invalid fd=%d: that is stdin, stdout or stderr; pass the TAP as descriptor 3 or above", v)
			}
			fd = v
		case "mac":
			mac, err := net.ParseMAC(p[1])
			if err != nil || len(mac) != 6 {
				return n, -1, fmt.Errorf("--net: invalid mac=%q: want six hex bytes like 52:54:00:12:34:56", p[1])
			}
			if mac[0]&1 != 0 {
				return n, -1, fmt.Errorf("--net: mac=%q is a multicast address (lowest bit of the first byte set)", p[1])
			}
			n.MAC = mac.String()
		default:
			return n, -1, fmt.Errorf("--net: unknown key %q (known: tap, bridge, fd, mac)", p[0])
		}
	}
	if n.Tap == "" && n.Bridge == "" && fd < 0 {
		return n, -1, fmt.Errorf("--net %q: give tap=NAME or bridge=BR (or fd=N, an open TAP)", s)
	}
	return n, fd, nil
}
