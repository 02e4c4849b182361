package vmm

import (
	"fmt"
	"io"
	"sync"

	"github.com/godwit-vm/godwit/devices/i8042"
	"github.com/godwit-vm/godwit/devices/power"
	"github.com/godwit-vm/godwit/devices/rtc"
	"github.com/godwit-vm/godwit/devices/serial"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/memory"
)

// ISA interrupt lines of the PC platform.
const (
	irqKeyboard = 1
	irqCOM1     = 4
	irqRTC      = 8
	irqMouse    = 12
)

// Legacy I/O ports.
const (
	portCOM1      = 0x3f8
	portPOST      = 0x80 // POST code / I/O delay port: writes are dropped
	portRTC       = 0x70
	portI8042Data = 0x60
	portI8042Cmd  = 0x64
)

// irqLine drives one in-kernel irqchip input.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.IRQLine(l.irq, high) }

// sink is a device that ignores writes and reads as all ones.
type sink struct{}

func (sink) Read(uint64, []byte)  {}
func (sink) Write(uint64, []byte) {}

// platform holds the PC devices of a VM.
type platform struct {
	uart    *serial.UART
	kbd     *i8042.I8042
	rtc     *rtc.RTC
	pm      *power.PM
	console *consoleWriter
	input   io.Reader
	vm      *VM
}

func (vm *VM) setupPlatform() (*platform, error) {
	p := &platform{vm: vm, input: vm.cfg.Input}
	vm.plat = p
	p.console = newConsoleWriter(vm.cfg.Console)
	if vm.cfg.Timeline != nil {
		p.console.first = func() { vm.phase(PhaseFirstSerialByte) }
	}
	p.uart = serial.New(p.console, irqLine{vm.kvm, irqCOM1})
	p.kbd = i8042.New(irqLine{vm.kvm, irqKeyboard}, irqLine{vm.kvm, irqMouse}, func() {
		vm.requestStop(ExitReset, nil)
	})
	var low, high uint64
	for _, r := range vm.mem.Regions() {
		if r.GPA < memory.HighMemStart {
			low += r.Size
		} else {
			high += r.Size
		}
	}
	p.rtc = rtc.New(rtc.Config{IRQ: irqLine{vm.kvm, irqRTC}, MemBelow4G: low, MemAbove4G: high})
	kbdData, kbdCmd := p.kbd.NewPorts()
	ins := []struct {
		base, size uint64
		name       string
		dev        interface {
			Read(uint64, []byte)
			Write(uint64, []byte)
		}
	}{
		{portCOM1, 8, "com1", p.uart},
		{portI8042Data, 1, "i8042-data", kbdData},
		{portI8042Cmd, 1, "i8042-cmd", kbdCmd},
		{portRTC, 2, "rtc", p.rtc},
		{portPOST, 1, "post", sink{}},
	}
	for _, d := range ins {
		if err := vm.pio.Insert(d.base, d.size, d.name, d.dev); err != nil {
			return nil, err
		}
	}
	if err := vm.setupACPI(); err != nil {
		return nil, err
	}
	return p, nil
}

// start begins forwarding console input.
func (p *platform) start() {
	if p.input != nil {
		go io.Copy(p.uart.InputWriter(), p.input)
	}
}

func (p *platform) close() {
	p.uart.Close()
	p.rtc.Close()
	p.console.Close()
}

// ConsoleInput sends bytes to the guest's serial console. It blocks until
// the guest has taken them all (the UART's receive FIFO applies
// back-pressure) or the VM is closed.
func (vm *VM) ConsoleInput(p []byte) error {
	if vm.plat == nil {
		return fmt.Errorf("console input: %w", ErrState)
	}
	_, err := vm.plat.uart.WriteInput(p)
	return err
}

// consoleWriter decouples the guest's console output from the writer it
// goes to: the UART's byte-at-a-time writes land in a buffer, and a
// goroutine hands whole chunks to the real writer, so a slow terminal
// never holds a vCPU in the UART for a system call per byte. When the
// buffer is full, writers wait: no output is lost.
type consoleWriter struct {
	out     io.Writer
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	closed  bool
	writing bool // the flusher is writing a chunk outside the lock
	done    chan struct{}
	first   func() // called (once) on the first Write; guarded by mu
}

const consoleBufMax = 1 << 20

func newConsoleWriter(out io.Writer) *consoleWriter {
	w := &consoleWriter{out: out, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.flusher()
	return w
}

func (w *consoleWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.buf) >= consoleBufMax && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	w.buf = append(w.buf, p...)
	w.cond.Broadcast()
	if w.first != nil {
		f := w.first
		w.first = nil
		f()
	}
	return len(p), nil
}

func (w *consoleWriter) flusher() {
	defer close(w.done)
	var chunk []byte
	for {
		w.mu.Lock()
		for len(w.buf) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.buf) == 0 && w.closed {
			w.mu.Unlock()
			return
		}
		chunk, w.buf = w.buf, chunk[:0]
		w.writing = true
		w.cond.Broadcast()
		w.mu.Unlock()
		w.out.Write(chunk)
		w.mu.Lock()
		w.writing = false
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// Flush waits until everything written so far has reached the writer.
func (w *consoleWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for (len(w.buf) > 0 || w.writing) && !w.closed {
		w.cond.Wait()
	}
}

// Close flushes what is buffered and stops the flusher.
func (w *consoleWriter) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
	return nil
}
