package migrate

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godwit-vm/godwit/migrate/migratetest"
)

// shortTempDir is a temporary directory short enough for unix sockets.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "gwmig")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// roundTrip accepts one connection on ln, dials uri, and checks that
// bytes go both ways.
func roundTrip(t *testing.T, ln net.Listener, uri string, conf *tls.Config) {
	t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		acc <- accepted{c, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, uri, conf)
	if err != nil {
		t.Fatalf("Dial %s: %v", uri, err)
	}
	defer c.Close()
	a := <-acc
	if a.err != nil {
		t.Fatalf("Accept: %v", a.err)
	}
	defer a.c.Close()
	msg := bytes.Repeat([]byte("page"), 1<<14)
	go func() { c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(a.c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("receiver read: %v", err)
	}
	go func() { a.c.Write([]byte("ok")) }()
	ack := make([]byte, 2)
	if _, err := io.ReadFull(c, ack); err != nil || string(ack) != "ok" {
		t.Fatalf("sender read %q: %v", ack, err)
	}
}

func TestTransportUnix(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "mig.sock")
	ln, err := Listen("unix:"+path, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(path)
	if err != nil || st.Mode()&fs.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket %v (%v), want a socket with mode 0600", st.Mode(), err)
	}
	roundTrip(t, ln, "unix:"+path, nil)

	// A live socket is not replaced.
	if _, err := Listen("unix:"+path, nil, false); err == nil || !strings.Contains(err.Error(), "migration socket "+path+" is in use") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	// A stale one is.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	ln, err = Listen("unix:"+path, nil, false)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	ln.Close()

	// Nobody listening.
	_, err = Dial(context.Background(), "unix:"+path, nil)
	if err == nil || !strings.Contains(err.Error(), "connect to unix:"+path+": ") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Dial with nobody listening: %v", err)
	}
	// TLS is for tcp:.
	conf := &tls.Config{}
	if _, err := Listen("unix:"+path, conf, false); err == nil || !strings.Contains(err.Error(), "TLS is for tcp: URIs") {
		t.Errorf("Listen unix with TLS: %v", err)
	}
	if _, err := Dial(context.Background(), "unix:"+path, conf); err == nil || !strings.Contains(err.Error(), "TLS is for tcp: URIs") {
		t.Errorf("Dial unix with TLS: %v", err)
	}
}

func TestTransportTCP(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "localhost", "[::1]"} {
		ln, err := Listen("tcp:"+host+":0", nil, false)
		if err != nil {
			if host == "[::1]" {
				continue // no IPv6 here
			}
			t.Fatalf("%s: %v", host, err)
		}
		roundTrip(t, ln, "tcp:"+ln.Addr().String(), nil)
		ln.Close()
	}
	if _, err := Dial(context.Background(), "tcp:127.0.0.1:0", nil); err == nil || !strings.Contains(err.Error(), "port 0") {
		t.Errorf("Dial port 0: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, "tcp:127.0.0.1:9", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context: %v", err)
	}
}

func TestTransportBadURI(t *testing.T) {
	cases := map[string]string{
		"x":                  `invalid migration URI "x": use unix:PATH or tcp:HOST:PORT`,
		"":                   `invalid migration URI "": use unix:PATH or tcp:HOST:PORT`,
		"http://h:1":         `invalid migration URI "http://h:1": use unix:PATH or tcp:HOST:PORT`,
		"UNIX:/a":            `invalid migration URI "UNIX:/a": use unix:PATH or tcp:HOST:PORT`,
		"unix:":              `invalid migration URI "unix:": unix: needs a socket path`,
		"tcp:host":           `invalid migration URI "tcp:host": use tcp:HOST:PORT`,
		"tcp:::1:4444":       `invalid migration URI "tcp:::1:4444": use tcp:HOST:PORT (IPv6 hosts in brackets`,
		"tcp:h:http":         `invalid migration URI "tcp:h:http": port "http" is not a number from 0 to 65535`,
		"tcp:h:65536":        `port "65536" is not a number`,
		"tcp:h:-1":           `port "-1" is not a number`,
		"tcp:a/b:1":          `bad host "a/b"`,
		"unix:/a\x00b":       "NUL byte",
		"tcp://1.2.3.4:5555": `invalid migration URI "tcp://1.2.3.4:5555": use tcp:HOST:PORT, without //`,
	}
	for uri, want := range cases {
		_, _, err := ParseURI(uri)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURI(%q): %v, want %q", uri, err, want)
		}
		if _, err := Listen(uri, nil, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Listen(%q): %v", uri, err)
		}
		if _, err := Dial(context.Background(), uri, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Dial(%q): %v", uri, err)
		}
	}
	for uri, want := range map[string][2]string{
		"unix:rel/sock":       {Unix, "rel/sock"},
		"unix:/run/m.sock":    {Unix, "/run/m.sock"},
		"tcp:10.0.0.2:4444":   {TCP, "10.0.0.2:4444"},
		"tcp:[fe80::1]:4444":  {TCP, "[fe80::1]:4444"},
		"tcp:host.example:80": {TCP, "host.example:80"},
		"tcp::4444":           {TCP, ":4444"},
	} {
		n, a, err := ParseURI(uri)
		if err != nil || n != want[0] || a != want[1] {
			t.Errorf("ParseURI(%q) = %q, %q, %v; want %q", uri, n, a, err, want)
		}
	}
}

// TestTransportNeedsTLS: a TCP listener on an address other hosts can reach
// needs TLS or --insecure.
func TestTransportNeedsTLS(t *testing.T) {
	for _, a := range []string{"0.0.0.0:0", "[::]:0", ":0", "10.1.2.3:4444", "example.com:4444", "[fe80::1%eth0]:1"} {
		err := CheckListen(a, false, false)
		want := "listening on " + a + " without TLS would let anyone who can reach it push a VM into this host or read its memory: give --tls-cert, --tls-key and --tls-ca, or --insecure"
		if err == nil || err.Error() != want {
			t.Errorf("CheckListen(%s): %v", a, err)
		}
		if CheckListen(a, true, false) != nil || CheckListen(a, false, true) != nil {
			t.Errorf("CheckListen(%s) with TLS or insecure refused", a)
		}
	}
	for _, a := range []string{"127.0.0.1:0", "127.3.4.5:1", "[::1]:0", "localhost:0", "LocalHost:9"} {
		if err := CheckListen(a, false, false); err != nil {
			t.Errorf("CheckListen(%s): %v", a, err)
		}
	}
	// On a real non-loopback address of this machine, if it has one.
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.To4() == nil {
			continue
		}
		uri := "tcp:" + net.JoinHostPort(ipn.IP.String(), "0")
		if ln, err := Listen(uri, nil, false); err == nil || !strings.Contains(err.Error(), "without TLS would let anyone") {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%s) without TLS: %v", uri, err)
		}
		ln, err := Listen(uri, nil, true)
		if err != nil {
			t.Errorf("Listen(%s, insecure): %v", uri, err)
		} else {
			ln.Close()
		}
		break
	}
	if _, err := Listen("tcp:0.0.0.0:0", nil, false); err == nil || !strings.Contains(err.Error(), "listening on 0.0.0.0:0 without TLS") {
		t.Errorf("Listen(tcp:0.0.0.0:0): %v", err)
	}
}

func TestTransportTLS(t *testing.T) {
	dir := t.TempDir()
	good := migratetest.NewPKI(t, dir, "good")
	other := migratetest.NewPKI(t, dir, "other")
	serverConf, err := LoadTLS(good.ServerCert, good.ServerKey, good.CAFile, true)
	if err != nil {
		t.Fatal(err)
	}
	if serverConf.MinVersion != tls.VersionTLS13 || serverConf.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server config: min version %#x, client auth %v", serverConf.MinVersion, serverConf.ClientAuth)
	}
	clientConf, err := LoadTLS(good.ClientCert, good.ClientKey, good.CAFile, false)
	if err != nil {
		t.Fatal(err)
	}

	// TLS makes any address acceptable; the test still listens on
	// loopback.
	ln, err := Listen("tcp:127.0.0.1:0", serverConf, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var rejected []error
	rejectedCh := make(chan error, 8)
	ln.(*TLSListener).OnReject = func(_ net.Addr, err error) { rejectedCh <- err }
	uri := "tcp:" + ln.Addr().String()
	roundTrip(t, ln, uri, clientConf)
	// By name too: the certificate holds localhost.
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	roundTrip(t, ln, "tcp:localhost:"+port, clientConf)

	// Refused clients: one with a certificate of another CA, one without
	// a certificate, one that does not speak TLS. Accept returns none of
	// them; the next good client gets through.
	otherClient, err := LoadTLS(other.ClientCert, other.ClientKey, good.CAFile, false)
	if err != nil {
		t.Fatal(err)
	}
	noCert := &tls.Config{RootCAs: clientConf.RootCAs, MinVersion: tls.VersionTLS13}
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
		}
		acc <- c
	}()
	for name, conf := range map[string]*tls.Config{"other CA": otherClient, "no certificate": noCert} {
		c, err := Dial(context.Background(), uri, conf)
		if err == nil {
			// TLS 1.3: the client learns of the refusal on its first read.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("client with %s: not refused (%v)", name, err)
		}
		select {
		case e := <-rejectedCh:
			rejected = append(rejected, e)
		case <-time.After(5 * time.Second):
			t.Errorf("client with %s: the listener reported no refusal", name)
		}
	}
	plain, err := Dial(context.Background(), uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	io.Copy(io.Discard, plain)
	plain.Close()
	<-rejectedCh
	select {
	case c := <-acc:
		t.Fatalf("Accept returned a refused client %v", c.RemoteAddr())
	default:
	}
	c, err := Dial(context.Background(), uri, clientConf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case a := <-acc:
		a.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("good client after refused ones not accepted")
	}
	for _, e := range rejected {
		if !strings.Contains(e.Error(), "certificate") {
			t.Errorf("refusal %v does not mention the certificate", e)
		}
	}

	// The client checks the server: a server whose certificate another
	// CA signed is refused by the client.
	badServer, err := LoadTLS(other.ServerCert, other.ServerKey, good.CAFile, true)
	if err != nil {
		t.Fatal(err)
	}
	ln2, err := Listen("tcp:127.0.0.1:0", badServer, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	go func() {
		if c, err := ln2.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := Dial(context.Background(), "tcp:"+ln2.Addr().String(), clientConf); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		if c != nil {
			c.Close()
		}
		t.Errorf("client to a server of another CA: %v", err)
	}
}

func TestTransportLoadTLSErrors(t *testing.T) {
	dir := t.TempDir()
	p := migratetest.NewPKI(t, dir, "x")
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not pem\n"), 0o600)
	missing := filepath.Join(dir, "missing.pem")
	cases := []struct {
		cert, key, ca string
		want          string
	}{
		{"", p.ClientKey, p.CAFile, "TLS: no certificate file given"},
		{p.ClientCert, "", p.CAFile, "TLS: no key file given"},
		{p.ClientCert, p.ClientKey, "", "TLS: no CA file given"},
		{missing, p.ClientKey, p.CAFile, "TLS certificate: open " + missing + ": no such file or directory"},
		{p.ClientCert, missing, p.CAFile, "TLS key: open " + missing + ": no such file or directory"},
		{p.ClientCert, p.ClientKey, missing, "TLS CA: open " + missing + ": no such file or directory"},
		{garbage, p.ClientKey, p.CAFile, "TLS certificate " + garbage + " with key " + p.ClientKey + ": "},
		{p.ClientCert, p.ServerKey, p.CAFile, "private key does not match public key"},
		{p.ClientCert, p.ClientKey, garbage, "TLS CA " + garbage + ": no PEM certificate in it"},
	}
	for _, c := range cases {
		for _, server := range []bool{false, true} {
			_, err := LoadTLS(c.cert, c.key, c.ca, server)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("LoadTLS(%q, %q, %q): %v, want %q", c.cert, c.key, c.ca, err, c.want)
			}
		}
	}
}
