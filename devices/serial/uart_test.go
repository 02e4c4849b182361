package serial

import (
	"bytes"
	"errors"
	"sync"
	"testing"
)

// line records every level driven on the interrupt line.
type line struct {
	mu     sync.Mutex
	levels []bool
	fail   bool
}

func (l *line) SetLevel(high bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels = append(l.levels, high)
	if l.fail {
		return errors.New("irqchip gone")
	}
	return nil
}

func (l *line) high() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

func (l *line) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels)
}

// syncBuf is a bytes.Buffer safe for the UART's output writer.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func in(u *UART, off uint64) uint8 {
	b := []byte{0}
	u.Read(off, b)
	return b[0]
}

func out(u *UART, off uint64, v uint8) { u.Write(off, []byte{v}) }

func newUART(t *testing.T) (*UART, *syncBuf, *line) {
	t.Helper()
	o := &syncBuf{}
	l := &line{}
	return New(o, l), o, l
}

// sizeFIFO mirrors the 8250 driver's size_fifo(): loop back 256 bytes and
// count how many come out.
func sizeFIFO(u *UART) int {
	oldLCR := in(u, RegLCR)
	out(u, RegLCR, 0)
	oldFCR := in(u, RegIIR)
	oldMCR := in(u, RegMCR)
	out(u, RegIIR, FCREnable|FCRClearRX|FCRClearTX)
	out(u, RegMCR, MCRLoop)
	out(u, RegLCR, 0x80)
	oldDL := uint16(in(u, 0)) | uint16(in(u, 1))<<8
	out(u, 0, 1)
	out(u, 1, 0)
	out(u, RegLCR, 0x03)
	for i := range 256 {
		out(u, RegData, uint8(i))
	}
	n := 0
	for ; in(u, RegLSR)&LSRDR != 0 && n < 256; n++ {
		in(u, RegData)
	}
	out(u, RegIIR, oldFCR)
	out(u, RegMCR, oldMCR)
	out(u, RegLCR, 0x80)
	out(u, 0, uint8(oldDL))
	out(u, 1, uint8(oldDL>>8))
	out(u, RegLCR, oldLCR)
	return n
}

// autoconfig mirrors the 8250 driver's autoconfig() and
// autoconfig_16550a() for a plain I/O-port COM port and returns the type
// name it would settle on.
func autoconfig(t *testing.T, u *UART) string {
	t.Helper()
	// IER existence test.
	scratch := in(u, RegIER)
	out(u, RegIER, 0)
	scratch2 := in(u, RegIER) & 0x0f
	out(u, RegIER, 0x0f)
	scratch3 := in(u, RegIER) & 0x0f
	out(u, RegIER, scratch)
	if scratch2 != 0 || scratch3 != 0x0f {
		return "none (IER test)"
	}
	saveMCR := in(u, RegMCR)
	saveLCR := in(u, RegLCR)
	// Loopback test.
	out(u, RegMCR, MCRLoop|0x0a)
	status1 := in(u, RegMSR) & 0xf0
	out(u, RegMCR, saveMCR)
	if status1 != 0x90 {
		return "none (loop test)"
	}
	out(u, RegLCR, 0xbf)
	out(u, 2, 0) // EFR
	out(u, RegLCR, 0)
	out(u, RegIIR, FCREnable)
	typ := ""
	switch in(u, RegIIR) >> 6 {
	case 0:
		return "8250/16450"
	case 1:
		return "unknown"
	case 2:
		return "16550"
	case 3:
		typ = "16550A"
	}
	// autoconfig_16550a
	out(u, RegLCR, 0x80)
	if in(u, 2) == 0 {
		return "16650 (EFR with DLAB)"
	}
	out(u, RegLCR, 0xbf)
	if in(u, 2) == 0 {
		return "EFRv2"
	}
	out(u, RegLCR, 0)
	st1 := in(u, RegMCR)
	out(u, RegLCR, 0xe0)
	st2 := in(u, 2)
	if (st2^st1)&MCRLoop == 0 {
		out(u, RegLCR, 0)
		out(u, RegMCR, st1^MCRLoop)
		out(u, RegLCR, 0xe0)
		st2 = in(u, 2)
		out(u, RegLCR, 0)
		out(u, RegMCR, st1)
		if (st2^st1)&MCRLoop != 0 {
			return "NS16550A"
		}
	}
	out(u, RegLCR, 0)
	out(u, RegIIR, FCREnable|0x20)
	s1 := in(u, RegIIR) >> 5
	out(u, RegIIR, FCREnable)
	out(u, RegLCR, 0x80)
	out(u, RegIIR, FCREnable|0x20)
	s2 := in(u, RegIIR) >> 5
	out(u, RegIIR, FCREnable)
	out(u, RegLCR, 0)
	if s1 == 6 && s2 == 7 {
		return "16750"
	}
	ier := in(u, RegIER)
	out(u, RegIER, ier&^0x40)
	if in(u, RegIER)&0x40 == 0 {
		out(u, RegIER, ier|0x40)
		if in(u, RegIER)&0x40 != 0 {
			return "XScale"
		}
	}
	out(u, RegIER, ier)
	if n := sizeFIFO(u); n != FIFOSize {
		t.Errorf("size_fifo counted %d bytes, want %d", n, FIFOSize)
	}
	out(u, RegLCR, saveLCR)
	// Reset as the driver does.
	out(u, RegMCR, saveMCR)
	out(u, RegIIR, FCREnable|FCRClearRX|FCRClearTX)
	out(u, RegIIR, 0)
	in(u, RegData)
	out(u, RegIER, 0)
	return typ
}

func TestLinuxAutoconfigDetects16550A(t *testing.T) {
	u, o, l := newUART(t)
	if got := autoconfig(t, u); got != "16550A" {
		t.Fatalf("driver would detect %q, want 16550A", got)
	}
	if o.String() != "" {
		t.Errorf("probe leaked %q to the console (loopback bytes must stay inside)", o.String())
	}
	if l.high() {
		t.Errorf("interrupt line left high after probe")
	}
	if s := mustSave(t, u); s.IER != 0 || s.MCR != 0 || s.LCR != 0 || s.RXLen != 0 {
		t.Errorf("probe left state %+v", s)
	}
}

// TestLinuxStartup replays serial8250_do_startup's checks: LSR safety check,
// the UART_BUG_THRE test and the UART_BUG_TXEN test.
func TestLinuxStartup(t *testing.T) {
	u, _, l := newUART(t)
	out(u, RegIIR, FCREnable|FCRClearRX|FCRClearTX)
	out(u, RegIIR, FCREnable|0x80)
	in(u, RegLSR)
	in(u, RegData)
	in(u, RegIIR)
	in(u, RegMSR)
	if in(u, RegLSR) == 0xff {
		t.Fatal("LSR safety check would fail")
	}
	out(u, RegLCR, 0x03) // 8n1

	// UART_BUG_THRE: THRE must re-assert when ETBEI is re-enabled.
	if in(u, RegLSR)&LSRTHRE == 0 {
		t.Fatal("THRE not set while idle")
	}
	out(u, RegIER, IERTHRE)
	iir1 := in(u, RegIIR)
	out(u, RegIER, 0)
	out(u, RegIER, IERTHRE)
	iir := in(u, RegIIR)
	out(u, RegIER, 0)
	if iir1&IIRNoInt != 0 {
		t.Errorf("first THRE test read IIR %#x, want an interrupt", iir1)
	}
	if iir&IIRNoInt != 0 {
		t.Errorf("THRE not re-asserted (IIR %#x): driver would flag UART_BUG_THRE", iir)
	}
	if iir&0x0f != IIRTHRE || iir&IIRFIFOs != IIRFIFOs {
		t.Errorf("IIR %#x, want %#x", iir, IIRFIFOs|IIRTHRE)
	}

	// UART_BUG_TXEN.
	out(u, RegMCR, MCRDTR|MCRRTS|MCROUT2)
	out(u, RegIER, IERTHRE)
	lsr := in(u, RegLSR)
	iir = in(u, RegIIR)
	out(u, RegIER, 0)
	if lsr&LSRTEMT != 0 && iir&IIRNoInt != 0 {
		t.Errorf("no THRE interrupt on enabling TX irq: driver would flag UART_BUG_TXEN")
	}
	if l.high() {
		t.Errorf("line high with IER=0")
	}
}

// TestTransmitInterruptDriven runs the driver's interrupt-driven transmit:
// enable THRI, and on each interrupt push up to 16 bytes, then disable THRI
// when done.
func TestTransmitInterruptDriven(t *testing.T) {
	u, o, l := newUART(t)
	out(u, RegIIR, FCREnable|0x80)
	msg := []byte("Linux version 6.1.0 (debian-kernel@lists.debian.org) booting on godwit\n")
	pending := msg
	out(u, RegIER, IERRDA|IERRLS|IERTHRE) // start_tx
	if !l.high() {
		t.Fatal("line not raised when THRI enabled with THR empty")
	}
	irqs := 0
	for l.high() {
		irqs++
		if irqs > 100 {
			t.Fatal("interrupt storm")
		}
		iir := in(u, RegIIR)
		if iir&IIRNoInt != 0 {
			t.Fatalf("line high but IIR %#x says no interrupt", iir)
		}
		lsr := in(u, RegLSR)
		if lsr&LSRTHRE == 0 {
			t.Fatalf("LSR %#x lacks THRE", lsr)
		}
		if len(pending) == 0 {
			out(u, RegIER, IERRDA|IERRLS) // stop_tx
			continue
		}
		n := min(16, len(pending))
		for _, c := range pending[:n] {
			out(u, RegData, c)
		}
		pending = pending[n:]
	}
	if o.String() != string(msg) {
		t.Errorf("console got %q, want %q", o.String(), msg)
	}
	if want := (len(msg)+15)/16 + 1; irqs != want {
		t.Errorf("took %d interrupts, want %d", irqs, want)
	}
	if in(u, RegIIR)&IIRNoInt == 0 {
		t.Errorf("interrupt still pending after stop_tx")
	}
}

func TestReceive(t *testing.T) {
	u, _, l := newUART(t)
	out(u, RegIIR, FCREnable|0x80) // trigger level 8
	out(u, RegIER, IERRDA|IERRLS)
	if l.high() {
		t.Fatal("line high with empty FIFO")
	}
	if n := u.Input([]byte("ls\n")); n != 3 {
		t.Fatalf("Input accepted %d, want 3", n)
	}
	if !l.high() {
		t.Fatal("line not raised on received data")
	}
	if iir := in(u, RegIIR); iir != IIRFIFOs|IIRTimeout {
		t.Errorf("IIR %#x with 3 bytes below trigger 8, want %#x", iir, IIRFIFOs|IIRTimeout)
	}
	var got []byte
	for in(u, RegLSR)&LSRDR != 0 {
		got = append(got, in(u, RegData))
	}
	if string(got) != "ls\n" {
		t.Errorf("guest read %q", got)
	}
	if l.high() {
		t.Error("line still high after the FIFO was drained")
	}
	if iir := in(u, RegIIR); iir != IIRFIFOs|IIRNoInt {
		t.Errorf("IIR %#x after drain", iir)
	}
	// Above the trigger level IIR says RDA.
	u.Input([]byte("0123456789"))
	if iir := in(u, RegIIR); iir != IIRFIFOs|IIRRDA {
		t.Errorf("IIR %#x with 10 bytes, want %#x", iir, IIRFIFOs|IIRRDA)
	}
	// Reading an empty RBR returns 0 and does not underflow.
	for range 20 {
		in(u, RegData)
	}
	if s := mustSave(t, u); s.RXLen != 0 {
		t.Errorf("RXLen %d", s.RXLen)
	}
}

func TestReceiveBounded(t *testing.T) {
	tests := []struct {
		name string
		fcr  uint8
		cap  int
	}{
		{"fifo", FCREnable, FIFOSize},
		{"nofifo", 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, _, _ := newUART(t)
			out(u, RegIIR, tc.fcr)
			big := bytes.Repeat([]byte("x"), 1<<16)
			if n := u.Input(big); n != tc.cap {
				t.Fatalf("accepted %d, want %d", n, tc.cap)
			}
			if n := u.Input(big); n != 0 {
				t.Fatalf("accepted %d more into a full FIFO", n)
			}
			in(u, RegData)
			if n := u.Input(big); n != 1 {
				t.Fatalf("accepted %d after one read, want 1", n)
			}
		})
	}
}

// TestWriteInputBackPressure feeds more than a FIFO's worth through
// WriteInput while a "guest" drains it, and checks nothing is lost.
func TestWriteInputBackPressure(t *testing.T) {
	u, _, _ := newUART(t)
	out(u, RegIIR, FCREnable)
	msg := bytes.Repeat([]byte("0123456789abcdef-"), 50)
	errc := make(chan error, 1)
	go func() {
		_, err := u.InputWriter().Write(msg)
		errc <- err
	}()
	var got []byte
	for len(got) < len(msg) {
		if in(u, RegLSR)&LSRDR != 0 {
			got = append(got, in(u, RegData))
		}
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			errc = nil
		default:
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("guest received %d bytes, differing from the %d sent", len(got), len(msg))
	}
	if errc != nil {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestCloseReleasesWriter(t *testing.T) {
	u, _, _ := newUART(t)
	errc := make(chan error, 1)
	go func() {
		_, err := u.WriteInput(bytes.Repeat([]byte("y"), 100))
		errc <- err
	}()
	u.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
}

func TestInterruptPriority(t *testing.T) {
	u, _, l := newUART(t)
	out(u, RegIIR, FCREnable)
	// Overrun through loopback, with data, THRE and modem deltas pending.
	out(u, RegMCR, MCRLoop)
	for range FIFOSize + 1 {
		out(u, RegData, 'a')
	}
	out(u, RegMCR, MCRLoop|MCRRTS) // CTS changes: DCTS
	out(u, RegIER, 0x0f)
	want := []uint8{IIRRLS, IIRRDA, IIRTHRE, IIRMS, IIRNoInt}
	for i, w := range want {
		if !l.high() && w != IIRNoInt {
			t.Fatalf("step %d: line low", i)
		}
		iir := in(u, RegIIR) & 0x0f
		if iir != w {
			t.Fatalf("step %d: IIR %#x, want %#x", i, iir, w)
		}
		switch w {
		case IIRRLS:
			if lsr := in(u, RegLSR); lsr&LSROE == 0 {
				t.Fatalf("LSR %#x lacks OE", lsr)
			}
		case IIRRDA:
			for in(u, RegLSR)&LSRDR != 0 {
				in(u, RegData)
			}
		case IIRTHRE:
			// the IIR read itself cleared it
		case IIRMS:
			if msr := in(u, RegMSR); msr&MSRDCTS == 0 || msr&MSRCTS == 0 {
				t.Fatalf("MSR %#x lacks DCTS|CTS", msr)
			}
		}
	}
	if l.high() {
		t.Error("line high with nothing pending")
	}
}

func TestTHRWriteClearsTHREOnlyUntilSent(t *testing.T) {
	u, _, l := newUART(t)
	out(u, RegIER, IERTHRE)
	n := l.count()
	// Writing THR while THRE is pending: cleared and immediately re-armed,
	// so the line must not toggle (no irqchip call per byte).
	for range 10 {
		out(u, RegData, 'z')
	}
	if l.count() != n || !l.high() {
		t.Errorf("line changed %d times while transmitting", l.count()-n)
	}
	// Reading IIR clears the THRE interrupt; a THR write re-arms it.
	in(u, RegIIR)
	if l.high() {
		t.Error("line high after IIR read cleared THRE")
	}
	out(u, RegData, 'z')
	if !l.high() {
		t.Error("THRE not re-armed after a byte left")
	}
}

func TestDivisorLatch(t *testing.T) {
	u, o, _ := newUART(t)
	out(u, RegIER, 0x05)
	out(u, RegLCR, LCRDLAB|0x03)
	out(u, 0, 0x01)
	out(u, 1, 0x00)
	if in(u, 0) != 1 || in(u, 1) != 0 {
		t.Error("divisor latch does not read back")
	}
	out(u, RegLCR, 0x03)
	if in(u, RegIER) != 0x05 {
		t.Error("DLM write touched IER")
	}
	if o.String() != "" {
		t.Errorf("DLL write transmitted %q", o.String())
	}
	s := mustSave(t, u)
	if s.DLL != 1 || s.DLM != 0 || s.LCR != 0x03 {
		t.Errorf("state %+v", s)
	}
}

func TestScratchAndModem(t *testing.T) {
	u, _, _ := newUART(t)
	for _, v := range []uint8{0xa5, 0x5a} {
		out(u, RegSCR, v)
		if got := in(u, RegSCR); got != v {
			t.Errorf("SCR %#x, want %#x", got, v)
		}
	}
	if msr := in(u, RegMSR); msr != MSRCTS|MSRDSR|MSRDCD {
		t.Errorf("idle MSR %#x", msr)
	}
	tests := []struct {
		mcr, lines uint8
	}{
		{MCRLoop, 0},
		{MCRLoop | MCRDTR, MSRDSR},
		{MCRLoop | MCRRTS, MSRCTS},
		{MCRLoop | MCROUT1, MSRRI},
		{MCRLoop | MCROUT2, MSRDCD},
		{MCRLoop | 0x0f, 0xf0},
	}
	for _, tc := range tests {
		out(u, RegMCR, tc.mcr)
		in(u, RegMSR) // clear deltas
		if got := in(u, RegMSR); got != tc.lines {
			t.Errorf("MCR %#x: MSR %#x, want %#x", tc.mcr, got, tc.lines)
		}
	}
	out(u, RegMCR, MCRLoop) // RI 1->0: trailing edge
	if got := in(u, RegMSR); got&MSRTERI == 0 {
		t.Errorf("MSR %#x lacks TERI", got)
	}
	out(u, RegMCR, 0xff)
	if got := in(u, RegMCR); got != 0x1f {
		t.Errorf("MCR reads %#x, want 0x1f", got)
	}
}

// TestOddAccesses checks that nothing panics and out-of-window bytes read
// as 0xff.
func TestOddAccesses(t *testing.T) {
	u, _, l := newUART(t)
	l.fail = true // errors from the irqchip are counted, not fatal
	for off := uint64(0); off < 12; off++ {
		for _, w := range []int{1, 2, 4, 8} {
			b := bytes.Repeat([]byte{0xee}, w)
			u.Write(off, b)
			u.Read(off, b)
			for i := range b {
				if off+uint64(i) >= Size && b[i] != 0xff {
					t.Fatalf("read at %d width %d byte %d = %#x", off, w, i, b[i])
				}
			}
		}
	}
	u.Write(1<<63, []byte{1})
	u.Read(^uint64(0), make([]byte, 4))
	u.Read(0, nil)
	if irqErr, _ := u.Errors(); irqErr == 0 {
		t.Error("failed SetLevel calls not counted")
	}
}

func TestWideAccessIsByteSplit(t *testing.T) {
	u, _, _ := newUART(t)
	u.Write(RegLCR, []byte{0x03, 0x0b}) // LCR, MCR
	if in(u, RegLCR) != 0x03 || in(u, RegMCR) != 0x0b {
		t.Error("2-byte write not split into LCR and MCR")
	}
}

func TestStateRoundTrip(t *testing.T) {
	u, _, _ := newUART(t)
	out(u, RegIIR, FCREnable|0xc0)
	out(u, RegLCR, 0x03)
	out(u, RegSCR, 0x42)
	out(u, RegIER, IERRDA)
	u.Input([]byte("abc"))
	s := mustSave(t, u)

	v, _, l := newUART(t)
	if err := v.Restore(s); err != nil {
		t.Fatal(err)
	}
	if !l.high() {
		t.Error("restored UART with pending RX did not drive its line high")
	}
	if mustSave(t, v) != s {
		t.Errorf("state differs after restore:\n%+v\n%+v", mustSave(t, v), s)
	}
	got := []byte{in(v, 0), in(v, 0), in(v, 0)}
	if string(got) != "abc" {
		t.Errorf("restored FIFO gave %q", got)
	}
	// Corrupt state is refused, not trusted.
	for _, bad := range []State{{RXLen: 200}, {RXLen: 2}, {IER: 0xff}, {MCR: 0xff}} {
		if err := v.Restore(bad); err == nil {
			t.Errorf("bad state %+v restored", bad)
		}
	}
}

func TestConcurrentAccess(t *testing.T) {
	u, o, _ := newUART(t)
	out(u, RegIIR, FCREnable)
	out(u, RegIER, 0x0f)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				out(u, RegData, byte('a'+g))
				in(u, RegIIR)
				in(u, RegLSR)
				if i%7 == 0 {
					u.Input([]byte{byte(i)})
					in(u, RegData)
				}
			}
		}()
	}
	wg.Wait()
	if len(o.String()) != 2000 {
		t.Errorf("console got %d bytes, want 2000", len(o.String()))
	}
}
