package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/godwit-vm/godwit/vmm"
)

// parseUserNetFlag parses the options after "--net user,": a comma list of
//
//	hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT  (repeatable)
//	restrict=on|off
//	net=CIDR  (or subnet=CIDR; default 10.0.2.0/24)
//	dns=IP[:PORT]  (the resolver the gateway forwards to)
func parseUserNetFlag(opts string) (*vmm.UserNetConfig, error) {
	u := &vmm.UserNetConfig{}
	if opts == "" {
		return u, nil
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("option %q: want key=value", kv)
		}
		if k != "hostfwd" && seen[k] {
			return nil, fmt.Errorf("option %s given twice", k)
		}
		seen[k] = true
		switch k {
		case "hostfwd":
			f, err := parseHostFwd(v)
			if err != nil {
				return nil, err
			}
			u.HostForwards = append(u.HostForwards, f)
		case "restrict":
			switch v {
			case "on", "yes", "true":
				u.Restrict = true
			case "off", "no", "false":
				u.Restrict = false
			default:
				return nil, fmt.Errorf("restrict=%q: want on or off", v)
			}
		case "net", "subnet":
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 29 {
				return nil, fmt.Errorf("%s=%q: want an IPv4 network like 10.0.2.0/24 (/8 to /29)", k, v)
			}
			u.Subnet = p.Masked().String()
		case "dns":
			if _, err := netip.ParseAddr(v); err != nil {
				if _, err := netip.ParseAddrPort(v); err != nil {
					return nil, fmt.Errorf("dns=%q: want IP or IP:PORT", v)
				}
			}
			u.DNS = v
		default:
			return nil, fmt.Errorf("unknown option %q (want hostfwd, restrict, net, dns)", k)
		}
	}
	return u, nil
}

// parseHostFwd parses [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT,
// QEMU's hostfwd syntax.
func parseHostFwd(v string) (vmm.HostForward, error) {
	bad := func(why string) (vmm.HostForward, error) {
		return vmm.HostForward{}, fmt.Errorf("hostfwd=%s: %s (want [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT, e.g. tcp:127.0.0.1:2222-:22)", v, why)
	}
	var f vmm.HostForward
	host, guest, ok := strings.Cut(v, "-")
	if !ok {
		return bad("no '-' between the host and guest sides")
	}
	proto, rest, ok := strings.Cut(host, ":")
	if !ok {
		return bad("no protocol")
	}
	switch proto {
	case "", "tcp":
		f.Proto = "tcp"
	case "udp":
		f.Proto = "udp"
	default:
		return bad(fmt.Sprintf("protocol %q is not tcp or udp", proto))
	}
	var err error
	if f.HostAddr, f.HostPort, err = splitFwdAddr(rest, true); err != nil {
		return bad("host side: " + err.Error())
	}
	if f.GuestAddr, f.GuestPort, err = splitFwdAddr(guest, false); err != nil {
		return bad("guest side: " + err.Error())
	}
	return f, nil
}

// splitFwdAddr parses [ADDR]:PORT; the host side's port may be 0 (any).
func splitFwdAddr(s string, host bool) (string, int, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", 0, fmt.Errorf("%q has no ':PORT'", s)
	}
	addr, ps := s[:i], s[i+1:]
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil || !a.Is4() {
			return "", 0, fmt.Errorf("%q is not an IPv4 address", addr)
		}
	}
	p, err := strconv.Atoi(ps)
	min := 1
	if host {
		min = 0
	}
	if err != nil || p < min || p > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from %d to 65535", ps, min)
	}
	return addr, p, nil
}
