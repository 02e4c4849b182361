// Package migrate carries a live migration's stream between two godwit
// processes: the transports for migration URIs and their TLS.
//
//	unix:PATH       a unix socket (mode 0600; for VMs on one host, or a
//	                tunnel such as ssh -L that ends in a socket)
//	tcp:HOST:PORT   TCP, with mutual TLS unless HOST is a loopback address
//
// A receiver calls Listen and accepts one connection; a sender calls Dial.
// LoadTLS builds the TLS configurations of both ends from PEM files: each
// end proves itself with a certificate signed by the CA the other trusts.
package migrate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/internal/unixsock"
)

// Networks of migration URIs.
const (
	Unix = "unix"
	TCP  = "tcp"
)

// ParseURI splits a migration URI into its network (Unix or TCP) and
// address (the socket's path, or HOST:PORT).
func ParseURI(uri string) (network, address string, err error) {
	scheme, rest, ok := strings.Cut(uri, ":")
	switch {
	case !ok:
		return "", "", fmt.Errorf("invalid migration URI %q: use unix:PATH or tcp:HOST:PORT", uri)
	case scheme == Unix:
		if rest == "" {
			return "", "", fmt.Errorf("invalid migration URI %q: unix: needs a socket path (unix:PATH)", uri)
		}
		if strings.ContainsRune(rest, 0) {
			return "", "", fmt.Errorf("invalid migration URI %q: the path contains a NUL byte", uri)
		}
		return Unix, rest, nil
	case scheme == TCP:
		if strings.HasPrefix(rest, "//") {
			return "", "", fmt.Errorf("invalid migration URI %q: use tcp:HOST:PORT, without //", uri)
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("invalid migration URI %q: use tcp:HOST:PORT (IPv6 hosts in brackets, tcp:[::1]:4444)", uri)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			return "", "", fmt.Errorf("invalid migration URI %q: port %q is not a number from 0 to 65535", uri, port)
		}
		if strings.ContainsAny(host, " /") {
			return "", "", fmt.Errorf("invalid migration URI %q: bad host %q", uri, host)
		}
		return TCP, rest, nil
	}
	return "", "", fmt.Errorf("invalid migration URI %q: use unix:PATH or tcp:HOST:PORT", uri)
}

// IsLoopback reports whether host (of HOST:PORT) names only this machine:
// localhost, 127.0.0.0/8 or ::1. An empty host, 0.0.0.0 and :: (every
// interface) and other names are not loopback.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	// A zone (fe80::1%eth0) is never loopback; ParseIP rejects it.
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckListen returns the error for listening on the TCP address
// HOST:PORT: none if it is a loopback address, if TLS is used, or if
// insecure says the user accepts an unprotected listener.
func CheckListen(address string, withTLS, insecure bool) error {
	if withTLS || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(address)
	if err == nil && IsLoopback(host) {
		return nil
	}
	return fmt.Errorf("listening on %s without TLS would let anyone who can reach it push a VM into this host or read its memory: give --tls-cert, --tls-key and --tls-ca, or --insecure", address)
}

// errTLSOnUnix is the error for TLS asked of a unix: URI.
func errTLSOnUnix(uri string) error {
	return fmt.Errorf("migration URI %s: TLS is for tcp: URIs; a unix socket is protected by its mode (0600) instead, so give no TLS files", uri)
}

// Dial connects to a receiver at uri. For a tcp: URI with tlsConf (a
// client configuration from LoadTLS), the connection is TLS and the
// handshake is done when Dial returns; the server's certificate must name
// HOST. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, uri string, tlsConf *tls.Config) (net.Conn, error) {
	network, address, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if network == Unix && tlsConf != nil {
		return nil, errTLSOnUnix(uri)
	}
	if network == TCP {
		if _, port, _ := net.SplitHostPort(address); port == "0" {
			return nil, fmt.Errorf("invalid migration URI %q: cannot connect to port 0", uri)
		}
	}
	var d net.Dialer
	var c net.Conn
	if tlsConf != nil {
		conf := tlsConf.Clone()
		if conf.ServerName == "" {
			conf.ServerName, _, _ = net.SplitHostPort(address)
		}
		td := tls.Dialer{NetDialer: &d, Config: conf}
		c, err = td.DialContext(ctx, network, address)
	} else {
		c, err = d.DialContext(ctx, network, address)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: %w", uri, ctx.Err())
		}
		return nil, fmt.Errorf("connect to %s: %v", uri, unixsock.RootCause(err))
	}
	return c, nil
}

// Listen listens for an incoming migration at uri. A unix: socket is
// created as the control API's is (mode 0600, a live socket is not
// replaced, a stale one is; closing the listener removes it). A tcp:
// listener with tlsConf (a server configuration from LoadTLS) accepts only
// clients whose certificate the CA signed; without tlsConf it refuses to
// start on an address that is not loopback unless insecure is true.
func Listen(uri string, tlsConf *tls.Config, insecure bool) (net.Listener, error) {
	network, address, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if network == Unix {
		if tlsConf != nil {
			return nil, errTLSOnUnix(uri)
		}
		return unixsock.Listen(address, unixsock.Options{What: "migration socket"})
	}
	if err := CheckListen(address, tlsConf != nil, insecure); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %v", uri, unixsock.RootCause(err))
	}
	if tlsConf == nil {
		return ln, nil
	}
	return &TLSListener{Listener: ln, conf: tlsConf}, nil
}

// HandshakeTimeout bounds each incoming TLS handshake.
var HandshakeTimeout = 10 * time.Second

// TLSListener is the listener Listen returns for tcp: with TLS. Accept
// returns only connections whose handshake succeeded (the client showed a
// certificate the CA signed); the others are closed and reported to
// OnReject.
type TLSListener struct {
	net.Listener
	conf *tls.Config
	// OnReject, if set, is told of each refused connection.
	OnReject func(remote net.Addr, err error)
}

// Accept waits for the next client that completes the TLS handshake.
func (l *TLSListener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := tls.Server(raw, l.conf)
		raw.SetDeadline(time.Now().Add(HandshakeTimeout))
		err = c.Handshake()
		raw.SetDeadline(time.Time{})
		if err == nil {
			return c, nil
		}
		raw.Close()
		if l.OnReject != nil {
			l.OnReject(raw.RemoteAddr(), err)
		}
	}
}

// LoadTLS builds the TLS configuration of one end of a migration from PEM
// files: certFile and keyFile are this end's certificate and private key,
// caFile the CA that signed the other end's certificate. A server
// requires the client's certificate and verifies it against the CA; a
// client verifies the server's. TLS 1.3 at least.
func LoadTLS(certFile, keyFile, caFile string, server bool) (*tls.Config, error) {
	for _, f := range []struct{ name, path string }{{"certificate", certFile}, {"key", keyFile}, {"CA", caFile}} {
		if f.path == "" {
			return nil, fmt.Errorf("TLS: no %s file given: mutual TLS needs a certificate, its key and the CA", f.name)
		}
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s with key %s: %v", certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", caFile)
	}
	conf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}
	if server {
		conf.ClientAuth = tls.RequireAndVerifyClientCert
		conf.ClientCAs = pool
	} else {
		conf.RootCAs = pool
	}
	return conf, nil
}
