package rtc

import (
	"sync"
	"testing"
	"time"
)

// chanLine reports each level change on a channel.
type chanLine struct {
	mu     sync.Mutex
	levels []bool
	ch     chan bool
}

func newChanLine() *chanLine { return &chanLine{ch: make(chan bool, 64)} }

func (l *chanLine) SetLevel(high bool) error {
	l.mu.Lock()
	l.levels = append(l.levels, high)
	l.mu.Unlock()
	select {
	case l.ch <- high:
	default:
	}
	return nil
}

func (l *chanLine) high() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.levels) > 0 && l.levels[len(l.levels)-1]
}

// fakeClock is a settable host clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func rd(r *RTC, idx uint8) uint8 {
	r.Write(0, []byte{idx})
	b := []byte{0}
	r.Read(1, b)
	return b[0]
}

func wr(r *RTC, idx, v uint8) {
	r.Write(0, []byte{idx})
	r.Write(1, []byte{v})
}

func TestReadTimeFormats(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 11, 22, 21, 7, 9, 0, time.UTC)} // a Sunday
	tests := []struct {
		name string
		b    uint8
		want map[uint8]uint8
	}{
		{"bcd 24h", B24H, map[uint8]uint8{
			RegSeconds: 0x09, RegMinutes: 0x07, RegHours: 0x21, RegWeekday: 0x01,
			RegDay: 0x22, RegMonth: 0x11, RegYear: 0x26, RegCentury: 0x20,
		}},
		{"binary 24h", B24H | BDM, map[uint8]uint8{
			RegSeconds: 9, RegMinutes: 7, RegHours: 21, RegWeekday: 1,
			RegDay: 22, RegMonth: 11, RegYear: 26, RegCentury: 20,
		}},
		{"bcd 12h pm", 0, map[uint8]uint8{RegHours: 0x80 | 0x09}},
		{"binary 12h pm", BDM, map[uint8]uint8{RegHours: 0x80 | 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Config{Now: clk.Now})
			wr(r, RegB, tc.b)
			for idx, want := range tc.want {
				if got := rd(r, idx); got != want {
					t.Errorf("reg %#x = %#x, want %#x", idx, got, want)
				}
			}
		})
	}
	// Midnight and noon in 12-hour mode.
	r := New(Config{Now: clk.Now})
	wr(r, RegB, 0)
	clk.set(time.Date(2026, 1, 1, 0, 30, 0, 0, time.UTC))
	if got := rd(r, RegHours); got != 0x12 {
		t.Errorf("00:30 in 12h = %#x, want 0x12 (12 AM)", got)
	}
	clk.set(time.Date(2026, 1, 1, 12, 30, 0, 0, time.UTC))
	if got := rd(r, RegHours); got != 0x92 {
		t.Errorf("12:30 in 12h = %#x, want 0x92 (12 PM)", got)
	}
}

// readLikeLinux waits for UIP to clear, reads the fields, and retries if
// the seconds changed, as mc146818_get_time does.
func readLikeLinux(t *testing.T, r *RTC) time.Time {
	t.Helper()
	for range 1000 {
		if rd(r, RegA)&AUIP != 0 {
			continue
		}
		sec := rd(r, RegSeconds)
		b := rd(r, RegB)
		regs := [128]uint8{
			RegSeconds: sec, RegMinutes: rd(r, RegMinutes), RegHours: rd(r, RegHours),
			RegDay: rd(r, RegDay), RegMonth: rd(r, RegMonth), RegYear: rd(r, RegYear),
			RegCentury: rd(r, RegCentury),
		}
		if rd(r, RegA)&AUIP != 0 || rd(r, RegSeconds) != sec {
			continue
		}
		tmp := New(Config{})
		tmp.s.Regs[RegB] = b
		return tmp.decodeTime(&regs)
	}
	t.Fatal("could not read a stable time")
	return time.Time{}
}

func TestTracksHostClock(t *testing.T) {
	for _, b := range []uint8{B24H, B24H | BDM} {
		r := New(Config{})
		wr(r, RegB, b)
		before := time.Now().UTC().Truncate(time.Second)
		got := readLikeLinux(t, r)
		after := time.Now().UTC()
		if got.Before(before) || got.After(after) {
			t.Errorf("B=%#x: guest time %v outside host [%v, %v]", b, got, before, after)
		}
	}
}

func TestUIP(t *testing.T) {
	clk := &fakeClock{}
	r := New(Config{Now: clk.Now})
	base := time.Date(2026, 5, 5, 5, 5, 5, 0, time.UTC)
	tests := []struct {
		frac time.Duration
		uip  bool
	}{
		{0, false},
		{500 * time.Millisecond, false},
		{time.Second - uipWindow - time.Nanosecond, false},
		{time.Second - uipWindow, true},
		{time.Second - time.Nanosecond, true},
	}
	for _, tc := range tests {
		clk.set(base.Add(tc.frac))
		if got := rd(r, RegA)&AUIP != 0; got != tc.uip {
			t.Errorf("at +%v UIP=%v, want %v", tc.frac, got, tc.uip)
		}
	}
	// Never while SET holds the clock.
	clk.set(base.Add(time.Second - time.Microsecond))
	wr(r, RegB, B24H|BSet)
	if rd(r, RegA)&AUIP != 0 {
		t.Error("UIP set while SET")
	}
	// UIP is read-only; the rest of A is writable.
	wr(r, RegA, 0xff)
	if got := rd(r, RegA); got != 0x7f {
		t.Errorf("A = %#x after writing 0xff, want 0x7f", got)
	}
}

func TestSetTime(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	r := New(Config{Now: clk.Now})
	// hwclock --systohc style: SET, write BCD fields, clear SET.
	wr(r, RegB, B24H|BSet)
	for idx, v := range map[uint8]uint8{
		RegSeconds: 0x30, RegMinutes: 0x45, RegHours: 0x23, RegDay: 0x31,
		RegMonth: 0x12, RegYear: 0x99, RegCentury: 0x19, RegWeekday: 0x06,
	} {
		wr(r, idx, v)
	}
	clk.set(clk.t.Add(5 * time.Second)) // time passes while SET: frozen
	if got := rd(r, RegSeconds); got != 0x30 {
		t.Errorf("seconds %#x while SET, want frozen 0x30", got)
	}
	wr(r, RegB, B24H)
	want := time.Date(1999, 12, 31, 23, 45, 30, 0, time.UTC)
	if off := mustSave(t, r).Offset; off != want.Unix()-clk.t.Unix() {
		t.Errorf("offset %d", off)
	}
	clk.set(clk.t.Add(31 * time.Second)) // rolls into 2000
	for idx, w := range map[uint8]uint8{
		RegSeconds: 0x01, RegMinutes: 0x46, RegYear: 0x99,
	} {
		if got := rd(r, idx); got != w {
			t.Errorf("reg %#x = %#x, want %#x", idx, got, w)
		}
	}
	clk.set(clk.t.Add(15 * time.Minute))
	for idx, w := range map[uint8]uint8{
		RegHours: 0x00, RegDay: 0x01, RegMonth: 0x01, RegYear: 0x00, RegCentury: 0x20, RegWeekday: 0x07,
	} {
		if got := rd(r, idx); got != w {
			t.Errorf("after rollover reg %#x = %#x, want %#x", idx, got, w)
		}
	}
	// Writing a field without SET moves the clock at once.
	wr(r, RegMinutes, 0x10)
	if got := rd(r, RegMinutes); got != 0x10 {
		t.Errorf("minutes %#x after direct write", got)
	}
	// Garbage is normalised, not a panic.
	wr(r, RegB, BSet)
	for idx := range uint8(0x0a) {
		wr(r, idx, 0xff)
	}
	wr(r, RegCentury, 0xff)
	wr(r, RegB, 0)
	_ = rd(r, RegSeconds)
}

func TestIndexNMIBitAndRAM(t *testing.T) {
	r := New(Config{MemBelow4G: 3 << 30, MemAbove4G: 2 << 30})
	r.Write(0, []byte{0x80 | RegD})
	b := []byte{0}
	r.Read(1, b)
	if b[0] != DVRT {
		t.Errorf("reg D via NMI-masked index = %#x", b[0])
	}
	// Every plain CMOS byte is read/write.
	for idx := uint8(0x0e); idx < 0x80; idx++ {
		if idx == RegCentury {
			continue
		}
		wr(r, idx, idx^0x5a)
	}
	for idx := uint8(0x0e); idx < 0x80; idx++ {
		if idx == RegCentury {
			continue
		}
		if got := rd(r, idx); got != idx^0x5a {
			t.Fatalf("CMOS %#x = %#x", idx, got)
		}
	}
	wr(r, RegD, 0)
	wr(r, RegC, 0xff)
	if rd(r, RegD) != DVRT || rd(r, RegC) != 0 {
		t.Error("C/D writable")
	}
	// Index reads float.
	r.Read(0, b)
	if b[0] != 0xff {
		t.Errorf("index port read %#x", b[0])
	}
}

func TestMemorySizeBytes(t *testing.T) {
	tests := []struct {
		below, above uint64
		want         map[uint8]uint8
	}{
		{32 << 20, 0, map[uint8]uint8{
			0x15: 0x80, 0x16: 0x02, // 640
			0x17: 0x00, 0x18: 0x7c, 0x30: 0x00, 0x31: 0x7c, // 31 MiB = 0x7c00 KiB
			0x34: 0x00, 0x35: 0x01, // 16 MiB / 64 KiB = 0x100
			0x5b: 0, 0x5c: 0, 0x5d: 0,
		}},
		{3 << 30, 5 << 30, map[uint8]uint8{
			0x17: 0xff, 0x18: 0xff, // capped
			0x34: 0x00, 0x35: 0xbf, // (3 GiB - 16 MiB) / 64 KiB = 0xbf00
			0x5b: 0x00, 0x5c: 0x40, 0x5d: 0x01, // 5 GiB / 64 KiB = 0x14000
		}},
	}
	for _, tc := range tests {
		r := New(Config{MemBelow4G: tc.below, MemAbove4G: tc.above})
		for idx, w := range tc.want {
			if got := rd(r, idx); got != w {
				t.Errorf("below=%d above=%d: CMOS %#x = %#x, want %#x", tc.below, tc.above, idx, got, w)
			}
		}
	}
}

func TestPeriodicInterrupt(t *testing.T) {
	l := newChanLine()
	r := New(Config{IRQ: l})
	defer r.Close()
	wr(r, RegA, 0x26) // 1024 Hz
	wr(r, RegB, B24H|BPIE)
	select {
	case high := <-l.ch:
		if !high {
			t.Fatal("first level change was low")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no periodic interrupt within 10s")
	}
	c := rd(r, RegC)
	if c&(CIRQF|CPF) != CIRQF|CPF || c&(CUF|CAF) != 0 {
		t.Errorf("C = %#x, want IRQF|PF", c)
	}
	// Disable, then reading C lowers the line for good.
	wr(r, RegB, B24H)
	rd(r, RegC)
	if l.high() {
		t.Error("line high after C read with PIE off")
	}
}

func TestUpdateInterrupt(t *testing.T) {
	l := newChanLine()
	r := New(Config{IRQ: l})
	defer r.Close()
	wr(r, RegB, B24H|BUIE|BAIE)
	// Alarm: every second ("don't care" everywhere).
	wr(r, RegSecondsAlarm, 0xc0)
	wr(r, RegMinutesAlarm, 0xff)
	wr(r, RegHoursAlarm, 0xc0)
	select {
	case <-l.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no update interrupt within 10s")
	}
	if c := rd(r, RegC); c != CIRQF|CUF|CAF {
		t.Errorf("C = %#x, want IRQF|UF|AF", c)
	}
	// SET clears UIE.
	wr(r, RegB, B24H|BSet|BUIE)
	if rd(r, RegB)&BUIE != 0 {
		t.Error("UIE survives SET")
	}
}

func TestNoTimerWithoutLine(t *testing.T) {
	r := New(Config{})
	wr(r, RegB, B24H|BPIE|BUIE)
	r.mu.Lock()
	armed := r.timer != nil
	r.mu.Unlock()
	if armed {
		t.Error("timer armed with no interrupt line")
	}
}

func TestOddAccessesAndState(t *testing.T) {
	clk := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	r := New(Config{Now: clk.Now})
	for off := uint64(0); off < 4; off++ {
		for _, w := range []int{2, 4} {
			b := make([]byte, w)
			r.Write(off, b)
			r.Read(off, b)
			for _, x := range b {
				if x != 0xff {
					t.Fatalf("wide read at %d = %x", off, b)
				}
			}
		}
	}
	r.Read(5, make([]byte, 1))
	r.Write(^uint64(0), []byte{1})
	wr(r, RegMinutes, 0x33)
	wr(r, 0x40, 0x99)
	s := mustSave(t, r)
	l := newChanLine()
	r2 := New(Config{Now: clk.Now, IRQ: l})
	defer r2.Close()
	if err := r2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if mustSave(t, r2) != s {
		t.Error("state differs after restore")
	}
	if rd(r2, RegMinutes) != 0x33 || rd(r2, 0x40) != 0x99 {
		t.Error("restored clock or RAM wrong")
	}
	if len(l.levels) != 1 || l.levels[0] {
		t.Errorf("restore drove %v, want one low", l.levels)
	}
}
