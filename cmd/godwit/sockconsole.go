package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/godwit-vm/godwit/internal/unixsock"
)

// socketConsole serves the guest console on a unix socket (--console
// socket:PATH), for godwitd: every connection gets the console's output
// from the moment it connects, and what any connection sends is the
// guest's input. Nothing on the socket is interpreted (no escape
// sequence): the client detaches by closing its connection, and the VM
// runs on. Output while nobody is connected is dropped (the console log,
// --console-log, keeps it). A client that reads too slowly loses its
// connection rather than slow the guest down.
type socketConsole struct {
	ln net.Listener
	// in carries the connections' input to the terminalConsole that
	// delivers it to whichever VM runs.
	in *os.File

	mu      sync.Mutex
	clients map[*consoleClient]struct{}
	closed  bool
}

type consoleClient struct {
	conn net.Conn
	out  chan []byte
	once sync.Once
}

func (c *consoleClient) close() { c.once.Do(func() { c.conn.Close() }) }

// clientQueue is how many output chunks wait for one client before it is
// dropped.
const clientQueue = 1024

// listenSocketConsole creates the console socket at path (mode 0600) and
// starts accepting connections; the returned reader is the guest's input.
func listenSocketConsole(path string) (*socketConsole, *os.File, error) {
	ln, err := unixsock.Listen(path, unixsock.Options{What: "console socket"})
	if err != nil {
		return nil, nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	s := &socketConsole{ln: ln, in: w, clients: map[*consoleClient]struct{}{}}
	go s.accept()
	return s, r, nil
}

func (s *socketConsole) accept() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		c := &consoleClient{conn: conn, out: make(chan []byte, clientQueue)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.clients[c] = struct{}{}
		s.mu.Unlock()
		go s.writer(c)
		go s.reader(c)
	}
}

func (s *socketConsole) writer(c *consoleClient) {
	for b := range c.out {
		if _, err := c.conn.Write(b); err != nil {
			break
		}
	}
	s.drop(c)
}

func (s *socketConsole) reader(c *consoleClient) {
	buf := make([]byte, 4096)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			if _, werr := s.in.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	s.drop(c)
}

// drop forgets c and closes its connection.
func (s *socketConsole) drop(c *consoleClient) {
	s.mu.Lock()
	if _, ok := s.clients[c]; ok {
		delete(s.clients, c)
		close(c.out)
	}
	s.mu.Unlock()
	c.close()
}

// Write sends the guest's output to every connected client. It never
// blocks on a client and never fails.
func (s *socketConsole) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.clients) == 0 {
		return len(p), nil
	}
	b := append([]byte(nil), p...)
	for c := range s.clients {
		select {
		case c.out <- b:
		default:
			// Too slow: drop it.
			delete(s.clients, c)
			close(c.out)
			go c.close()
		}
	}
	return len(p), nil
}

// close stops accepting, disconnects every client and removes the socket.
func (s *socketConsole) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.clients {
		delete(s.clients, c)
		close(c.out)
		go c.close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.in.Close()
}

// logWriter appends to a console log and never fails the guest's write.
type logWriter struct{ f *os.File }

func (l logWriter) Write(p []byte) (int, error) {
	l.f.Write(p)
	return len(p), nil
}

// openConsoleLog opens path for appending, for --console-log.
func openConsoleLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	return f, nil
}

// withConsoleLog wraps openConsole's result so that the output also goes
// to the log at logPath ("" for none).
func withConsoleLog(out io.Writer, closeConsole func(), logPath string) (io.Writer, func(), error) {
	if logPath == "" {
		return out, closeConsole, nil
	}
	f, err := openConsoleLog(logPath)
	if err != nil {
		closeConsole()
		return nil, nil, err
	}
	w := io.Writer(logWriter{f})
	if out != io.Discard {
		w = io.MultiWriter(logWriter{f}, out)
	}
	return w, func() { closeConsole(); f.Close() }, nil
}

// isSocketConsole reports whether spec is socket:PATH.
func isSocketConsole(spec string) bool {
	return strings.HasPrefix(spec, "socket:") && len(spec) > len("socket:")
}
