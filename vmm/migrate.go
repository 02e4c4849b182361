package vmm

// Live migration, the source side: pre-copy rounds over KVM's dirty log,
// then stop-and-copy, then a three-step switch-over (migrate/PROTOCOL.md).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/persist"
)

// ExitMigrated is the exit reason of a VM that now runs on a migration's
// destination.
const ExitMigrated = ExitError + 1

// Defaults of a migration.
const (
	DefaultDowntime = 300 * time.Millisecond
	// maxRounds is where auto-converge starts throttling (and a
	// migration without it keeps going until its timeout).
	throttleAfterRounds = 2
	throttleStep        = 10 // percent per step, from throttleStart
	throttleStart       = 20
	throttleMax         = 99
	// postcopyAfterRounds is how many pre-copy rounds a post-copy
	// migration runs before it switches over, if they do not converge.
	postcopyAfterRounds = 2
)

// Config message sections.
const (
	secCPUID = "cpuid"
)

// migration is the state of a migration in progress, shared with
// MigrationStatus and CancelMigration.
type migration struct {
	mu     sync.Mutex
	info   MigrationInfo
	cancel context.CancelFunc
	// conn, while the stream is open, gives BytesSent as it grows
	// (info.BytesSent is updated once a round).
	conn *migrate.Conn
}

func (m *migration) update(f func(*MigrationInfo)) {
	m.mu.Lock()
	f(&m.info)
	m.mu.Unlock()
}

// MigrationStatus reports the current or last migration.
func (vm *VM) MigrationStatus() MigrationInfo {
	m := vm.mig.Load()
	if m == nil {
		return MigrationInfo{Phase: "none"}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	info := m.info
	if m.conn != nil {
		info.BytesSent = max(info.BytesSent, m.conn.Sent())
	}
	return info
}

// CancelMigration aborts a migration that has not switched over; the VM
// runs on here.
func (vm *VM) CancelMigration() error {
	m := vm.mig.Load()
	if m == nil || vm.State() != Migrating {
		return fmt.Errorf("migrate-cancel: %w: no migration in progress", ErrState)
	}
	m.mu.Lock()
	phase := m.info.Phase
	m.mu.Unlock()
	if phase == "switchover" {
		return fmt.Errorf("migrate-cancel: %w: the migration is switching over", ErrState)
	}
	m.cancel()
	return nil
}

// Migrate moves the VM to the godwit receiving at o.URI without stopping
// it: memory is copied while the guest runs, round after round of what
// it wrote meanwhile, until the rest fits in o.Downtime; then the guest
// is paused, the rest and the device state sent, and the destination
// runs it. Migrate returns once the destination reports the guest
// running; the VM here is then Stopped (ExitMigrated). Any failure before
// the switch-over leaves the VM running here (or paused, as it was). If
// the link dies during the switch-over itself, the VM stays paused here
// and the error says so: whether the destination runs it cannot be known,
// and two copies must never run.
func (vm *VM) Migrate(ctx context.Context, o MigrateOptions) (*MigrationResult, error) {
	prev, err := vm.life.begin("migrate", Running, Paused)
	if err != nil {
		return nil, err
	}
	defer vm.life.end()
	if o.Downtime <= 0 {
		o.Downtime = DefaultDowntime
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := &migration{info: MigrationInfo{Phase: "setup", URI: o.URI}, cancel: cancel}
	vm.mig.Store(m)
	if err := vm.life.move(Migrating); err != nil {
		return nil, err
	}
	res, err := vm.migrate(ctx, o, m, prev)
	if err != nil {
		phase := "failed"
		if errors.Is(ctx.Err(), context.Canceled) {
			phase = "cancelled"
			err = fmt.Errorf("migration cancelled (%w)", err)
		} else if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("migration timed out after %v (%w)", o.Timeout, err)
		}
		m.update(func(i *MigrationInfo) { i.Phase, i.Error = phase, err.Error() })
		return nil, fmt.Errorf("migrate to %s: %w", o.URI, err)
	}
	m.update(func(i *MigrationInfo) { i.Phase = "completed" })
	return res, nil
}

// migrate runs a migration; on an error before switch-over it has put
// the VM back in state prev.
func (vm *VM) migrate(ctx context.Context, o MigrateOptions, m *migration, prev State) (res *MigrationResult, err error) {
	start := time.Now()
	paused := false      // the guest is paused for stop-and-copy
	disksClosed := false // the disk images were released to the destination
	committed := false   // Switch was sent: never resume here
	defer func() {
		if err == nil || committed {
			return
		}
		// The next snapshot cannot be a diff: the dirty log was
		// collected for the stream.
		vm.lastSnapshot = ""
		if disksClosed {
			if rerr := vm.reopenDisks(); rerr != nil {
				err = fmt.Errorf("%w; and the disks could not be reopened here: %v", err, rerr)
			}
		}
		if vm.State() == Stopped {
			// The guest ended meanwhile (it powered off, or a vCPU
			// failed): nothing to resume.
			err = fmt.Errorf("%w; the VM stopped meanwhile (%s%s)", err, vm.exit.Reason, errSuffix(vm.exit.Err))
			return
		}
		if merr := vm.life.move(prev); merr != nil {
			err = errors.Join(err, merr)
			return
		}
		if paused && prev == Running {
			vm.resumeLocked()
		}
	}()
	nc, err := migrate.Dial(ctx, o.URI, o.TLS)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	// Cancellation and timeouts end blocked reads and writes.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer nc.Close()
	c := migrate.NewConn(nc)
	c.SetBandwidth(o.Bandwidth)
	m.mu.Lock()
	m.conn = c
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.info.BytesSent = max(m.info.BytesSent, c.Sent())
		m.conn = nil
		m.mu.Unlock()
	}()
	var buf []byte
	expect := func(want migrate.Type) error {
		t, p, err := c.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("waiting for %s from the destination: %w", want, err)
		}
		if t == migrate.Error {
			return fmt.Errorf("the destination refused: %s", p)
		}
		if t != want {
			return fmt.Errorf("%w: expected %s, got %s", migrate.ErrProtocol, want, t)
		}
		return nil
	}
	// Hello, then the configuration: the destination checks that it can
	// run the VM before anything else is sent.
	if err := c.Send(migrate.Hello, migrate.HelloPayload()); err != nil {
		return nil, err
	}
	if err := expect(migrate.HelloAck); err != nil {
		return nil, err
	}
	cfgFile, err := vm.migrationConfig(o.MigrateDisks)
	if err != nil {
		return nil, err
	}
	if err := c.Send(migrate.Config, cfgFile.Encode()); err != nil {
		return nil, err
	}
	if err := expect(migrate.ConfigAck); err != nil {
		return nil, err
	}
	// Pre-copy.
	var dc *diskCopier
	if o.MigrateDisks {
		dc = vm.startDiskCopy()
		defer dc.stop()
	}
	if err := vm.startDirtyLog(); err != nil {
		return nil, fmt.Errorf("dirty logging: %w", err)
	}
	m.update(func(i *MigrationInfo) { i.Phase = "precopy" })
	var batch migrate.Batch
	var z *migrate.Compressor
	if o.Compress {
		if z, err = migrate.NewCompressor(); err != nil {
			return nil, err
		}
	}
	sel := memory.PageSet(nil) // round 0: every page
	throttle := 0
	var stopThrottle func()
	defer func() {
		if stopThrottle != nil {
			stopThrottle()
		}
	}()
	for round := 0; ; round++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t0, sent0 := time.Now(), c.Sent()
		var diskLeft uint64
		if dc != nil {
			if diskLeft, err = dc.send(c); err != nil {
				return nil, err
			}
		}
		raw, err := vm.sendPages(c, &batch, sel, round > 0, z)
		if err != nil {
			return nil, err
		}
		if err := c.Send(migrate.RoundEnd); err != nil {
			return nil, err
		}
		took := time.Since(t0)
		bytes := c.Sent() - sent0
		if z != nil {
			bytes = raw // compressed, the link carries guest bytes faster
		}
		bw := int64(float64(bytes) / max(took.Seconds(), 1e-6))
		if o.Bandwidth > 0 {
			bw = min(bw, o.Bandwidth)
		}
		if sel, err = vm.collectDirty(); err != nil {
			return nil, err
		}
		dirty := diskLeft
		for _, b := range sel {
			dirty += b.Count() * memory.PageSize
		}
		rate := int64(float64(dirty) / max(took.Seconds(), 1e-6))
		expected := time.Duration(float64(dirty) / float64(max(bw, 1)) * float64(time.Second))
		m.update(func(i *MigrationInfo) {
			i.Rounds, i.BytesSent, i.DirtyRate, i.Bandwidth, i.Remaining, i.ExpectedDowntime, i.Throttle =
				round+1, c.Sent(), rate, bw, dirty, expected, throttle
		})
		if expected <= o.Downtime || prev == Paused {
			break
		}
		if o.PostCopy && dc == nil && round+1 >= postcopyAfterRounds {
			if stopThrottle != nil {
				stopThrottle()
				stopThrottle = nil
			}
			return vm.postcopySource(c, m, o, prev, start, sel, &paused, &disksClosed, &committed)
		}
		if o.AutoConverge && round+1 >= throttleAfterRounds && rate > bw/2 {
			throttle = min(max(throttle+throttleStep, throttleStart), throttleMax)
			if stopThrottle != nil {
				stopThrottle()
			}
			stopThrottle = vm.throttleVCPUs(throttle)
		}
	}
	if stopThrottle != nil {
		stopThrottle()
		stopThrottle = nil
	}
	// Stop and copy.
	m.update(func(i *MigrationInfo) { i.Phase = "stop-and-copy" })
	pausedAt := time.Now()
	if prev == Running {
		if err := vm.pauseLocked(); err != nil {
			return nil, err
		}
		paused = true
	}
	// What the last round found dirty, and what was dirtied since; the
	// disks' last writes (twice: the second pass sends what the guest
	// wrote during the first, before it was paused).
	if dc != nil {
		for range 2 {
			if _, err := dc.send(c); err != nil {
				return nil, err
			}
		}
	}
	if sel, err = vm.moreDirty(sel); err != nil {
		return nil, err
	}
	if _, err := vm.sendPages(c, &batch, sel, true, z); err != nil {
		return nil, err
	}
	var state persist.File
	if err := vm.saveMachineState(&state); err != nil {
		return nil, err
	}
	// The destination opens the disks to build the VM: hand the image
	// locks over (they come back here if the migration fails).
	if err := vm.closeDisks(); err != nil {
		return nil, err
	}
	disksClosed = true
	if err := c.Send(migrate.State, state.Encode()); err != nil {
		return nil, err
	}
	if err := expect(migrate.Ready); err != nil {
		return nil, err
	}
	// Switch-over: from here on the guest never runs here again.
	m.update(func(i *MigrationInfo) { i.Phase = "switchover" })
	committed = true
	if err := c.Send(migrate.Switch); err != nil {
		return nil, vm.switchFailed(err)
	}
	if err := expect(migrate.Running); err != nil {
		return nil, vm.switchFailed(err)
	}
	downtime := time.Since(pausedAt)
	res = &MigrationResult{URI: o.URI, BytesSent: c.Sent(), Total: time.Since(start), Downtime: downtime}
	m.update(func(i *MigrationInfo) { res.Rounds = i.Rounds; i.BytesSent = c.Sent() })
	vm.log.Info("migrated", "uri", o.URI, "rounds", res.Rounds, "bytes", res.BytesSent, "downtime", downtime)
	vm.requestStop(ExitMigrated, nil)
	return res, nil
}

// moreDirty returns pending (pages found dirty and not sent yet) with
// the pages dirtied since added.
func (vm *VM) moreDirty(pending memory.PageSet) (memory.PageSet, error) {
	now, err := vm.collectDirty()
	if err != nil {
		return nil, err
	}
	for i, b := range pending {
		now[i].OrWords(b.AppendWords(nil))
	}
	return now, nil
}

// switchFailed handles a link lost during switch-over: the VM stays
// paused here, its disks released.
func (vm *VM) switchFailed(err error) error {
	vm.life.move(Paused)
	return fmt.Errorf("the link failed during switch-over (%v): the destination may or may not be running the guest, so it stays paused here with its disks released; resume it here only if the destination is not running it", err)
}

// migrationConfig is the Config message: the configuration (disks at
// their current paths), each vCPU's CPUID table and the memory size.
func (vm *VM) migrationConfig(copyDisks bool) (*persist.File, error) {
	sc := vm.machineConfig()
	for i, d := range vm.cfg.Disks {
		img := vm.pci.disk(i).img
		sd := snapshotDisk{Image: d.Path, Format: d.Format, ReadOnly: d.ReadOnly, Serial: d.Serial, Size: img.Size(),
			Migrate: copyDisks && !d.ReadOnly}
		if _, ok := img.(*disk.Qcow2); ok {
			sd.Format = disk.FormatQcow2
		} else if sd.Format == "" {
			sd.Format = disk.FormatRaw
		}
		sc.Disks = append(sc.Disks, sd)
	}
	cj, err := json.Marshal(sc)
	if err != nil {
		return nil, err
	}
	var f persist.File
	if err := f.Add(secConfig, verConfig, cj); err != nil {
		return nil, err
	}
	var cpuid machineState
	for _, c := range vm.vcpus {
		cpuid.CPUID = append(cpuid.CPUID, c.cpuid)
	}
	cpuid.CPUs, cpuid.Memory = uint32(len(vm.vcpus)), vm.mem.Size()
	if err := f.AddValue(secCPUID, 1, cpuid); err != nil {
		return nil, err
	}
	if err := f.AddValue(secMemory, verMemory, memoryState{Size: vm.mem.Size()}); err != nil {
		return nil, err
	}
	return &f, nil
}

// sendPages sends the pages sel selects (all with sel nil). Zero pages
// are skipped in the first round (the destination's memory starts zero)
// and sent as zero records after it.
//
// It returns the bytes of page records it sent before compression: the
// link's speed in guest bytes, which is what the downtime estimate needs.
func (vm *VM) sendPages(c *migrate.Conn, b *migrate.Batch, sel memory.PageSet, zeros bool, z *migrate.Compressor) (uint64, error) {
	var raw uint64
	flush := func() error {
		if b.Len() == 0 {
			return nil
		}
		var err error
		raw += uint64(b.Len())
		if z != nil {
			err = c.Write(migrate.PagesZstd, z.Compress(b.Bytes()))
		} else {
			err = c.Write(migrate.Pages, b.Bytes())
		}
		b.Reset()
		return err
	}
	for ri, r := range vm.mem.Regions() {
		pages := r.Size / memory.PageSize
		for p := uint64(0); p < pages; {
			if sel != nil && !sel[ri].Test(p) {
				p++
				continue
			}
			page := r.Host[p*memory.PageSize : (p+1)*memory.PageSize]
			zero := memory.IsZero(page)
			if zero && !zeros {
				p++
				continue
			}
			// A run of selected pages of the same kind.
			q := p + 1
			for q < pages && q-p < migrate.MaxPagesPerRecord && (sel == nil || sel[ri].Test(q)) &&
				memory.IsZero(r.Host[q*memory.PageSize:(q+1)*memory.PageSize]) == zero {
				q++
			}
			gpa := uint64(r.GPA) + p*memory.PageSize
			if zero {
				b.Add(gpa, int(q-p), nil)
			} else {
				b.Add(gpa, int(q-p), r.Host[p*memory.PageSize:q*memory.PageSize])
			}
			if b.Len() >= migrate.MaxBatch-migrate.MaxPagesPerRecord*memory.PageSize {
				if err := flush(); err != nil {
					return raw, err
				}
			}
			p = q
		}
	}
	if err := flush(); err != nil {
		return raw, err
	}
	return raw, c.Flush()
}

// throttleVCPUs keeps the vCPUs out of the guest for pct percent of each
// 20 ms period (auto-converge), until the returned function is called.
func (vm *VM) throttleVCPUs(pct int) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		const period = 20 * time.Millisecond
		off := period * time.Duration(pct) / 100
		for {
			vm.pausing.Store(true)
			for _, c := range vm.vcpus {
				c.cpu.Kick()
			}
			select {
			case <-done:
			case <-time.After(off):
			}
			vm.pausing.Store(false)
			for _, c := range vm.vcpus {
				c.wake()
			}
			select {
			case <-done:
				return
			case <-time.After(period - off):
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// closeDisks flushes and closes every disk image (the destination of a
// migration opens them); reopenDisks undoes it.
func (vm *VM) closeDisks() error {
	for i := range vm.cfg.Disks {
		pd := vm.pci.disk(i)
		if err := pd.img.Flush(); err != nil && !vm.cfg.Disks[i].ReadOnly {
			vm.reopenDisks()
			return fmt.Errorf("disk %d: flush: %w", i, err)
		}
		pd.img.Close()
		pd.img = nil
		pd.closers[0] = nopCloser{}
	}
	return nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

func (vm *VM) reopenDisks() error {
	var errs []error
	for i, d := range vm.cfg.Disks {
		if vm.pci.disk(i).img != nil {
			continue
		}
		// The destination may take a moment to let go of the lock.
		var err error
		for try := 0; try < 50; try++ {
			if err = vm.reopenDisk(i, d); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("disk %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}
