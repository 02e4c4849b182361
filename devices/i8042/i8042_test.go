package i8042

import (
	"sync"
	"testing"
)

type line struct {
	mu     sync.Mutex
	levels []bool
}

func (l *line) SetLevel(high bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels = append(l.levels, high)
	return nil
}

func (l *line) high() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

type rig struct {
	t        *testing.T
	c        *I8042
	data     *Port
	cmd      *Port
	kbd, aux *line
	resets   int
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, kbd: &line{}, aux: &line{}}
	r.c = New(r.kbd, r.aux, func() { r.resets++ })
	r.data, r.cmd = r.c.NewPorts()
	return r
}

func (r *rig) status() uint8 {
	b := []byte{0}
	r.cmd.Read(0, b)
	return b[0]
}

func (r *rig) readData() uint8 {
	b := []byte{0}
	r.data.Read(0, b)
	return b[0]
}

func (r *rig) command(c uint8)   { r.cmd.Write(0, []byte{c}) }
func (r *rig) writeData(v uint8) { r.data.Write(0, []byte{v}) }

// i8042Command mirrors the driver's __i8042_command(): send the command,
// then param bytes, then collect nResp answer bytes. It fails where the
// driver would time out (no OBF).
func (r *rig) i8042Command(cmd uint8, params []uint8, nResp int) ([]uint8, uint8, bool) {
	r.t.Helper()
	if r.status()&StatusIBF != 0 {
		return nil, 0, false
	}
	r.command(cmd)
	for _, p := range params {
		if r.status()&StatusIBF != 0 {
			return nil, 0, false
		}
		r.writeData(p)
	}
	var out []uint8
	var st uint8
	for range nResp {
		st = r.status()
		if st&StatusOBF == 0 {
			return out, st, false
		}
		out = append(out, r.readData())
	}
	return out, st, true
}

func TestLinuxProbe(t *testing.T) {
	r := newRig(t)
	// i8042_flush: status must not be 0xff, buffer empty.
	if st := r.status(); st == 0xff || st&StatusOBF != 0 {
		t.Fatalf("status %#x at flush", st)
	}
	// i8042_controller_selftest
	if out, _, ok := r.i8042Command(CmdSelfTest, nil, 1); !ok || out[0] != 0x55 {
		t.Fatalf("self-test gave %v ok=%v", out, ok)
	}
	// i8042_controller_init: read CTR twice, must match.
	a, _, ok1 := r.i8042Command(CmdReadCTR, nil, 1)
	b, _, ok2 := r.i8042Command(CmdReadCTR, nil, 1)
	if !ok1 || !ok2 || a[0] != b[0] {
		t.Fatalf("CTR reads %v %v", a, b)
	}
	ctr := a[0]
	if ctr&CTRSys == 0 {
		t.Errorf("CTR %#x lacks SYS", ctr)
	}
	ctr &^= CTRKbdInt | CTRAuxInt
	ctr |= CTRKbdDis
	if _, _, ok := r.i8042Command(CmdWriteCTR, []uint8{ctr}, 0); !ok {
		t.Fatal("write CTR failed")
	}
	if got, _, _ := r.i8042Command(CmdReadCTR, nil, 1); got[0] != ctr {
		t.Errorf("CTR reads back %#x, want %#x", got[0], ctr)
	}
	// i8042_check_aux: internal loop works and reports AUX data...
	out, st, ok := r.i8042Command(CmdAuxLoop, []uint8{0x5a}, 1)
	if !ok || out[0] != 0x5a || st&StatusAuxData == 0 {
		t.Fatalf("aux loop gave %v status %#x", out, st)
	}
	// ...but enabling the aux port does not clear CTR.AUXDIS, so the driver
	// gives up on AUX without an IRQ test.
	r.command(CmdAuxDisable)
	got, _, _ := r.i8042Command(CmdReadCTR, nil, 1)
	if got[0]&CTRAuxDis == 0 {
		t.Error("AUXDIS clear after 0xa7")
	}
	r.command(CmdAuxEnable)
	got, _, _ = r.i8042Command(CmdReadCTR, nil, 1)
	if got[0]&CTRAuxDis == 0 {
		t.Error("AUXDIS cleared by 0xa8: driver would wait for an absent mouse's IRQ")
	}
	// Interface tests.
	if out, _, ok := r.i8042Command(CmdKbdTest, nil, 1); !ok || out[0] != 0 {
		t.Errorf("kbd test gave %v", out)
	}
	if out, _, ok := r.i8042Command(CmdAuxTest, nil, 1); !ok || out[0] == 0 || out[0] == 0xfa || out[0] == 0xff {
		t.Errorf("aux test gave %v; driver would think a port exists", out)
	}
	if r.resets != 0 {
		t.Errorf("%d resets during probe", r.resets)
	}
}

func TestAbsentKeyboardTimesOutWithInterrupt(t *testing.T) {
	r := newRig(t)
	r.writeData(0xf2) // ATKBD_CMD_GETID
	st := r.status()
	if st&(StatusOBF|StatusTimeout) != StatusOBF|StatusTimeout || st&StatusAuxData != 0 {
		t.Fatalf("status %#x, want OBF|TIMEOUT from keyboard", st)
	}
	if !r.kbd.high() {
		t.Fatal("keyboard IRQ not raised (CTR.KBDINT is set)")
	}
	if v := r.readData(); v != 0xfe {
		t.Errorf("data %#x, want 0xfe", v)
	}
	if r.kbd.high() {
		t.Error("keyboard IRQ still high after read")
	}
	if st := r.status(); st&(StatusOBF|StatusTimeout) != 0 {
		t.Errorf("status %#x after read", st)
	}
	// Mouse writes time out as aux data; aux IRQ only when CTR.AUXINT.
	r.command(CmdAuxSend)
	r.writeData(0xff)
	if st := r.status(); st&(StatusOBF|StatusAuxData|StatusTimeout) != StatusOBF|StatusAuxData|StatusTimeout {
		t.Errorf("status %#x after aux send", st)
	}
	if r.aux.high() || r.kbd.high() {
		t.Error("interrupt raised for aux data with CTR.AUXINT clear")
	}
	r.readData()
	r.command(CmdWriteCTR)
	r.writeData(CTRAuxInt | CTRSys)
	r.command(CmdAuxLoop)
	r.writeData(0xa5)
	if !r.aux.high() {
		t.Error("aux IRQ not raised with CTR.AUXINT set")
	}
	if r.readData() != 0xa5 || r.aux.high() {
		t.Error("aux loop data or line wrong")
	}
}

func TestReset(t *testing.T) {
	tests := []struct {
		name   string
		do     func(r *rig)
		resets int
	}{
		{"pulse 0xfe", func(r *rig) { r.command(CmdPulseReset) }, 1},
		{"pulse 0xf0 (all lines)", func(r *rig) { r.command(0xf0) }, 1},
		{"pulse 0xff (none)", func(r *rig) { r.command(0xff) }, 0},
		{"write output port bit0=0", func(r *rig) { r.command(CmdWriteOutput); r.writeData(0x02) }, 1},
		{"write output port bit0=1", func(r *rig) { r.command(CmdWriteOutput); r.writeData(0x03) }, 0},
		{"linux kb_wait loop", func(r *rig) {
			for range 10 {
				for r.status()&StatusIBF != 0 {
				}
				r.command(CmdPulseReset)
			}
		}, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			tc.do(r)
			if r.resets != tc.resets || int(r.c.Resets()) != tc.resets {
				t.Errorf("resets %d (counted %d), want %d", r.resets, r.c.Resets(), tc.resets)
			}
		})
	}
}

// TestResetCallbackMayReenter checks OnReset runs without the lock held.
func TestResetCallbackMayReenter(t *testing.T) {
	var c *I8042
	called := false
	c = New(nil, nil, func() { _, _ = c.Save(); called = true })
	c.Write(CommandPort-DataPort, []byte{CmdPulseReset})
	if !called {
		t.Fatal("OnReset not called")
	}
}

func TestOutputPortAndA20(t *testing.T) {
	r := newRig(t)
	r.command(CmdA20Disable)
	out, _, _ := r.i8042Command(CmdReadOutput, nil, 1)
	if out[0]&OutA20 != 0 {
		t.Errorf("A20 still set: %#x", out[0])
	}
	r.command(CmdA20Enable)
	out, _, _ = r.i8042Command(CmdReadOutput, nil, 1)
	if out[0]&OutA20 == 0 || out[0]&OutResetLine == 0 {
		t.Errorf("output port %#x", out[0])
	}
}

func TestRAMAndCommandStatusBit(t *testing.T) {
	r := newRig(t)
	r.command(0x65) // write RAM[5]
	if r.status()&StatusCMD == 0 {
		t.Error("CMD status bit clear after command write")
	}
	r.writeData(0x77)
	if r.status()&StatusCMD != 0 {
		t.Error("CMD status bit set after data write")
	}
	if out, _, _ := r.i8042Command(0x25, nil, 1); out[0] != 0x77 {
		t.Errorf("RAM[5] = %#x", out[0])
	}
	r.command(CmdKbdDisable)
	if out, _, _ := r.i8042Command(CmdReadCTR, nil, 1); out[0]&CTRKbdDis == 0 {
		t.Error("0xad did not set CTR.KBDDIS")
	}
	r.command(CmdKbdEnable)
	if out, _, _ := r.i8042Command(CmdReadCTR, nil, 1); out[0]&CTRKbdDis != 0 {
		t.Error("0xae did not clear CTR.KBDDIS")
	}
	// Clearing SYS in CTR clears the status bit.
	r.command(CmdWriteCTR)
	r.writeData(0)
	if r.status()&StatusSYS != 0 {
		t.Error("SYS status with CTR.SYS clear")
	}
}

func TestQueueBoundedAndOddAccesses(t *testing.T) {
	r := newRig(t)
	for range 100 {
		r.command(CmdReadCTR)
	}
	if s := mustSave(t, r.c); s.QLen != QueueSize {
		t.Errorf("queue %d, want %d", s.QLen, QueueSize)
	}
	for range QueueSize {
		r.readData()
	}
	// Empty: re-reads the last byte, OBF clear.
	if r.status()&StatusOBF != 0 {
		t.Error("OBF with empty queue")
	}
	_ = r.readData()
	for off := uint64(0); off < 8; off++ {
		for _, w := range []int{1, 2, 4} {
			b := make([]byte, w)
			r.c.Write(off, b)
			r.c.Read(off, b)
			if w > 1 || (off != 0 && off != 4) {
				for _, x := range b {
					if x != 0xff {
						t.Fatalf("off %d width %d read %x", off, w, b)
					}
				}
			}
		}
	}
	r.c.Read(^uint64(0), make([]byte, 1))
	r.c.Write(1<<62, nil)
}

func TestStateRoundTrip(t *testing.T) {
	r := newRig(t)
	r.writeData(0x12) // queues a timeout byte, raises kbd line
	s := mustSave(t, r.c)
	r2 := newRig(t)
	if err := r2.c.Restore(s); err != nil {
		t.Fatal(err)
	}
	if mustSave(t, r2.c) != s {
		t.Errorf("state differs:\n%+v\n%+v", mustSave(t, r2.c), s)
	}
	if !r2.kbd.high() {
		t.Error("restored pending keyboard byte did not drive the line")
	}
	if r2.readData() != 0xfe {
		t.Error("restored queue lost")
	}
	if err := r2.c.Restore(State{QLen: 255}); err == nil {
		t.Error("a queue longer than the controller's was restored")
	}
}
