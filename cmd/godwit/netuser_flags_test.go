package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/vmm"
)

func TestParseUserNetFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want *vmm.UserNetConfig
	}{
		{"", &vmm.UserNetConfig{}},
		{"hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53", &vmm.UserNetConfig{HostForwards: []vmm.HostForward{
			{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22},
			{Proto: "udp", HostPort: 5353, GuestPort: 53},
		}}},
		{"hostfwd=:0.0.0.0:8080-10.0.2.15:80", &vmm.UserNetConfig{HostForwards: []vmm.HostForward{
			{Proto: "tcp", HostAddr: "0.0.0.0", HostPort: 8080, GuestAddr: "10.0.2.15", GuestPort: 80},
		}}},
		{"hostfwd=tcp::0-:22", &vmm.UserNetConfig{HostForwards: []vmm.HostForward{{Proto: "tcp", GuestPort: 22}}}},
		{"restrict=on,net=192.168.5.7/24,dns=127.0.0.1:5300", &vmm.UserNetConfig{Restrict: true, Subnet: "192.168.5.0/24", DNS: "127.0.0.1:5300"}},
		{"restrict=off,subnet=10.9.0.0/16,dns=1.1.1.1", &vmm.UserNetConfig{Subnet: "10.9.0.0/16", DNS: "1.1.1.1"}},
	} {
		got, err := parseUserNetFlag(tc.in)
		if err != nil {
			t.Errorf("parseUserNetFlag(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseUserNetFlag(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseUserNetFlagErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"restrict", `option "restrict": want key=value`},
		{"restrict=maybe", `restrict="maybe": want on or off`},
		{"restrict=on,restrict=off", "option restrict given twice"},
		{"mac=52:54:00:12:34:56", `unknown option "mac"`},
		{"net=10.0.2.0", `net="10.0.2.0": want an IPv4 network`},
		{"net=10.0.2.0/30", `net="10.0.2.0/30": want an IPv4 network`},
		{"subnet=fd00::/64", `subnet="fd00::/64": want an IPv4 network`},
		{"dns=resolver.example", `dns="resolver.example": want IP or IP:PORT`},
		{"hostfwd=tcp:2222:22", "no '-' between the host and guest sides"},
		{"hostfwd=sctp::1-:2", `protocol "sctp" is not tcp or udp`},
		{"hostfwd=2222-:22", "no protocol"},
		{"hostfwd=tcp::99999-:22", `host side: port "99999" is not a number from 0 to 65535`},
		{"hostfwd=tcp::2222-:0", `guest side: port "0" is not a number from 1 to 65535`},
		{"hostfwd=tcp:localhost:2222-:22", `host side: "localhost" is not an IPv4 address`},
		{"hostfwd=tcp::2222-22", `guest side: "22" has no ':PORT'`},
		{"hostfwd=tcp::2222-[::1]:22", `guest side: "[::1]" is not an IPv4 address`},
	} {
		_, err := parseUserNetFlag(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseUserNetFlag(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
	// The full error names the syntax.
	_, err := parseUserNetFlag("hostfwd=tcp:2222:22")
	if err == nil || !strings.Contains(err.Error(), "tcp:127.0.0.1:2222-:22") {
		t.Errorf("hostfwd error %v does not show an example", err)
	}
}
