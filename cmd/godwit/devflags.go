package main

import (
	"fmt"
	"net"
	"strings"

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

// parseNetFlag parses --net tap=NAME[,mac=M], bridge=BR[,mac=M] or
// user[,...].
func parseNetFlag(s string) (vmm.NetConfig, error) {
	var n vmm.NetConfig
	if s == "user" || strings.HasPrefix(s, "user,") {
		u, err := parseUserNetFlag(strings.TrimPrefix(strings.TrimPrefix(s, "user"), ","))
		if err != nil {
			return n, fmt.Errorf("--net user: %w", err)
		}
		n.User = u
		return n, nil
	}
	kv, err := parseKeyValues(s)
	if err != nil {
		return n, fmt.Errorf("--net: %w", err)
	}
	for _, p := range kv {
		switch p[0] {
		case "tap":
			n.Tap = p[1]
		case "bridge":
			n.Bridge = p[1]
		case "mac":
			mac, err := net.ParseMAC(p[1])
			if err != nil || len(mac) != 6 {
				return n, fmt.Errorf("--net: invalid mac=%q: want six hex bytes like 52:54:00:12:34:56", p[1])
			}
			if mac[0]&1 != 0 {
				return n, fmt.Errorf("--net: mac=%q is a multicast address (lowest bit of the first byte set)", p[1])
			}
			n.MAC = mac.String()
		default:
			return n, fmt.Errorf("--net: unknown key %q (known: tap, bridge, mac)", p[0])
		}
	}
	if n.Tap == "" && n.Bridge == "" {
		return n, fmt.Errorf("--net %q: give tap=NAME or bridge=BR", s)
	}
	return n, nil
}
