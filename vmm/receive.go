package vmm

// Live migration, the destination side.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/persist"
)

// Receive takes one incoming VM from a migration stream on conn: it
// checks that it can run the VM before the source commits (memory, CPU
// features, disks), fills guest memory as the source's rounds arrive,
// builds the VM from the final state, and runs it once the source has
// switched over. It returns the running VM. On any failure it tells the
// source why (when the link still works), discards what it built, and
// returns the error: nothing is left running. Receive owns conn and closes
// it when the migration is over: when it returns, or, after a post-copy
// switch-over, once the last page has arrived (the guest runs meanwhile).
func Receive(ctx context.Context, conn net.Conn, o ReceiveOptions) (*VM, error) {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := migrate.NewConn(conn)
	phase := func(p string) {
		if o.Progress != nil {
			o.Progress(p)
		}
	}
	vm, postcopy, err := receive(c, conn, o, phase)
	if !postcopy || err != nil {
		defer conn.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		// Tell the source, if it still listens.
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.Send(migrate.Error, []byte(err.Error()))
		return nil, fmt.Errorf("incoming migration: %w", err)
	}
	return vm, nil
}

func receive(c *migrate.Conn, conn net.Conn, o ReceiveOptions, phase func(string)) (_ *VM, postcopy bool, err error) {
	var buf []byte
	read := func(want ...migrate.Type) (migrate.Type, []byte, error) {
		t, p, err := c.Read(buf)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, errors.New("the source closed the connection before the migration completed")
		}
		if err != nil {
			return 0, nil, err
		}
		if t == migrate.Error {
			return 0, nil, fmt.Errorf("the source aborted: %s", p)
		}
		for _, w := range want {
			if t == w {
				return t, p, nil
			}
		}
		return 0, nil, fmt.Errorf("%w: unexpected %s message", migrate.ErrProtocol, t)
	}
	phase("setup")
	_, p, err := read(migrate.Hello)
	if err != nil {
		return nil, false, err
	}
	v, err := migrate.ParseHello(p)
	if err != nil {
		return nil, false, err
	}
	var vb [4]byte
	vb[0] = byte(v)
	if err := c.Send(migrate.HelloAck, vb[:]); err != nil {
		return nil, false, err
	}
	_, p, err = read(migrate.Config)
	if err != nil {
		return nil, false, err
	}
	rs, cfg, err := checkIncoming(p, o)
	if err != nil {
		return nil, false, err
	}
	sink, err := newDiskSink(&cfg, &rs.sc)
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			sink.close(true)
		}
	}()
	mem, err := memory.NewWithOptions(cfg.Memory, memory.Options{})
	if err != nil {
		return nil, false, err
	}
	rs.mem = mem
	built := false
	defer func() {
		if !built {
			mem.Close()
		}
	}()
	if err := c.Send(migrate.ConfigAck); err != nil {
		return nil, false, err
	}
	phase("precopy")
	out := &migrate.Sender{C: c}
	var pc *postcopyDest
	var unz *migrate.Decompressor
	defer func() {
		if err != nil && pc != nil {
			pc.finish()
		}
	}()
	put := func(gpa uint64, n int, data []byte) error {
		dst, err := mem.Slice(memory.GPA(gpa), uint64(n)*memory.PageSize)
		if err != nil {
			return fmt.Errorf("%w: pages at %#x: %v", migrate.ErrProtocol, gpa, err)
		}
		if data == nil {
			clear(dst)
		} else {
			copy(dst, data)
		}
		return nil
	}
	for {
		t, p, err := read(migrate.Pages, migrate.PagesZstd, migrate.RoundEnd, migrate.State, migrate.PostcopyStart, migrate.DiskChunk)
		if err != nil {
			return nil, false, err
		}
		if t == migrate.RoundEnd {
			continue
		}
		if t == migrate.DiskChunk {
			if err := sink.put(p); err != nil {
				return nil, false, err
			}
			continue
		}
		if t == migrate.PagesZstd {
			if unz == nil {
				if unz, err = migrate.NewDecompressor(); err != nil {
					return nil, false, err
				}
			}
			if p, err = unz.Decompress(p); err != nil {
				return nil, false, err
			}
			t = migrate.Pages
		}
		if t == migrate.Pages {
			if err := migrate.ApplyPages(p, put); err != nil {
				return nil, false, err
			}
			continue
		}
		if t == migrate.PostcopyStart {
			if pc != nil {
				return nil, false, fmt.Errorf("%w: a second postcopy-start", migrate.ErrProtocol)
			}
			phase("postcopy")
			if pc, err = startPostcopyDest(mem, p, out); err != nil {
				return nil, false, err
			}
			continue
		}
		phase("stop-and-copy")
		f, err := persist.Decode(p)
		if err != nil {
			return nil, false, fmt.Errorf("device state: %w", err)
		}
		rs.file = f
		if err := sectionValue(f, secMachine, verMachine, &rs.ms); err != nil {
			return nil, false, err
		}
		if rs.ms.CPUs != uint32(cfg.CPUs) || rs.ms.Memory != cfg.Memory {
			return nil, false, fmt.Errorf("%w: the final state describes %d vCPUs and %d bytes, the configuration %d and %d", errSnapshot, rs.ms.CPUs, rs.ms.Memory, cfg.CPUs, cfg.Memory)
		}
		break
	}
	// In post-copy, building the devices may touch pages that are still
	// at the source: from here a reader copies arriving pages in while
	// this goroutine builds, and hands it the other messages.
	next := func(want migrate.Type) error {
		_, _, err := read(want)
		return err
	}
	var in chan inMsg
	if pc != nil {
		in = make(chan inMsg, 4)
		go func() {
			for {
				t, p, err := c.Read(buf)
				if err == nil && t == migrate.Pages {
					if err = migrate.ApplyPages(p, pc.put); err == nil {
						continue
					}
				}
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					err = errors.New("the source closed the connection")
				}
				in <- inMsg{t: t, p: append([]byte(nil), p...), err: err}
				if err != nil || t == migrate.PostcopyDone || t == migrate.Error {
					return
				}
			}
		}()
		next = func(want migrate.Type) error {
			msg := <-in
			switch {
			case msg.err != nil:
				return msg.err
			case msg.t == migrate.Error:
				return fmt.Errorf("the source aborted: %s", msg.p)
			case msg.t != want:
				return fmt.Errorf("%w: unexpected %s message", migrate.ErrProtocol, msg.t)
			}
			return nil
		}
	}
	if err := sink.close(false); err != nil {
		return nil, false, fmt.Errorf("migrated disks: %w", err)
	}
	vm, err := build(cfg, rs)
	if err != nil {
		return nil, false, err
	}
	built = true
	if vm.pci != nil {
		vm.pci.paused = true
	}
	defer func() {
		if err != nil {
			vm.Close()
		}
	}()
	if receivedHook != nil && pc == nil {
		receivedHook(vm)
	}
	if err := out.Send(migrate.Ready); err != nil {
		return nil, false, err
	}
	phase("switchover")
	if err := next(migrate.Switch); err != nil {
		return nil, false, err
	}
	if pc != nil {
		pc.vm.Store(vm)
	}
	if err := vm.Start(); err != nil {
		return nil, false, err
	}
	vm.announce()
	if err := out.Send(migrate.Running); err != nil {
		// The source has committed: the guest runs here either way.
		vm.log.Warn("the source did not hear that the guest runs here", "err", err)
	}
	if pc != nil {
		// The rest of the memory arrives while the guest runs.
		go func() {
			defer conn.Close()
			if err := next(migrate.PostcopyDone); err != nil {
				pc.fail(err)
				return
			}
			pc.finish()
			if err := out.Send(migrate.PostcopyDone); err != nil {
				vm.log.Warn("post-copy: acknowledging the last page", "err", err)
			}
			phase("completed")
		}()
		phase("running")
		return vm, true, nil
	}
	phase("running")
	return vm, false, nil
}

// receivedHook, set by tests, sees each incoming VM once it is built and
// before it runs.
var receivedHook func(*VM)

// checkIncoming reads the Config message and checks this host can run the
// VM: CPU features, memory, disks. It returns the restore context and the
// VM's configuration with host-local backends from o.
func checkIncoming(p []byte, o ReceiveOptions) (*restoring, Config, error) {
	var cfg Config
	f, err := persist.Decode(p)
	if err != nil {
		return nil, cfg, fmt.Errorf("configuration: %w", err)
	}
	cs, ok := f.Get(secConfig)
	if !ok {
		return nil, cfg, fmt.Errorf("%w: configuration without a config section", migrate.ErrProtocol)
	}
	var sc snapshotConfig
	dec := json.NewDecoder(bytes.NewReader(cs.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		return nil, cfg, fmt.Errorf("%w: configuration: %v", migrate.ErrProtocol, err)
	}
	var ms machineState
	if err := sectionValue(f, secCPUID, 1, &ms); err != nil {
		return nil, cfg, err
	}
	if sc.CPUs < 1 || len(ms.CPUID) != sc.CPUs || ms.Memory != sc.Memory {
		return nil, cfg, fmt.Errorf("%w: configuration of %d vCPUs with %d CPUID tables", migrate.ErrProtocol, sc.CPUs, len(ms.CPUID))
	}
	if err := checkHostCPUID(o.KVMPath, ms.CPUID); err != nil {
		return nil, cfg, err
	}
	if avail, ok := memAvailable(); ok && sc.Memory > avail {
		return nil, cfg, fmt.Errorf("the VM has %d MiB of memory, this host has %d MiB available", sc.Memory>>20, avail>>20)
	}
	rs := &restoring{sc: sc, mst: memoryState{Size: sc.Memory}, cpuid: ms.CPUID}
	ro := RestoreOptions{Console: o.Console, Input: o.Input, Logger: o.Logger, KVMPath: o.KVMPath, Nets: o.Nets}
	cfg = Config{CPUs: sc.CPUs, Memory: sc.Memory, Kernel: sc.Kernel, Initrd: sc.Initrd, Cmdline: sc.Cmdline,
		RNG: sc.RNG, DirtyRing: sc.DirtyRing, Console: o.Console, Input: o.Input, Logger: o.Logger, KVMPath: o.KVMPath}
	if len(o.Disks) > len(sc.Disks) {
		return nil, cfg, fmt.Errorf("%d disks given, the VM has %d", len(o.Disks), len(sc.Disks))
	}
	for i, sd := range sc.Disks {
		path := sd.Image
		if i < len(o.Disks) && o.Disks[i] != "" {
			path = o.Disks[i]
		}
		if sd.Migrate {
			// Copied from the source into a new image (diskmigrate.go).
			cfg.Disks = append(cfg.Disks, DiskConfig{Path: path, Format: sd.Format, Serial: sd.Serial})
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return nil, cfg, fmt.Errorf("disk %d: %s is not here: %w (migrating needs storage both hosts see, or --disk path= for this host's copy)", i, path, errors.Unwrap(err))
		}
		cfg.Disks = append(cfg.Disks, DiskConfig{Path: path, Format: sd.Format, ReadOnly: sd.ReadOnly, Serial: sd.Serial})
	}
	if cfg.Nets, err = rs.nets(ro); err != nil {
		return nil, cfg, err
	}
	return rs, cfg, nil
}

// memAvailable is MemAvailable from /proc/meminfo.
func memAvailable() (uint64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var kb uint64
		if n, _ := fmt.Sscanf(string(line), "MemAvailable: %d kB", &kb); n == 1 {
			return kb << 10, true
		}
	}
	return 0, false
}

// announce tells the network where the VM's NICs are now: a RARP
// broadcast from each MAC, five times over a few hundred milliseconds
// (a switch that missed one learns from the next).
func (vm *VM) announce() {
	if vm.pci == nil {
		return
	}
	var nics []func() error
	for _, d := range vm.pci.devs {
		if d.netdev != nil {
			nics = append(nics, d.netdev.Announce)
		}
	}
	if len(nics) == 0 {
		return
	}
	go func() {
		for i := 0; i < 5; i++ {
			for _, a := range nics {
				if err := a(); err != nil {
					vm.log.Debug("announce", "err", err)
				}
			}
			select {
			case <-vm.done:
				return
			case <-time.After(time.Duration(50*(i+1)) * time.Millisecond):
			}
		}
	}()
}
