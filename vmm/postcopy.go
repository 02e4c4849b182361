package vmm

// Post-copy migration: the guest moves to the destination before all of
// its memory has; the destination fetches each page it lacks on first
// touch (userfaultfd) while the source pushes the rest.

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/migrate"
	"github.com/godwit-vm/godwit/persist"
	"github.com/godwit-vm/godwit/uffd"
)

// postcopySection is the PostcopyStart payload: the pages the destination
// must not use from pre-copy (dirtied since they were sent), one bitmap
// per region.
type postcopyPages struct {
	Pages [][]uint64
}

// errPostcopyLost is the failure after a post-copy switch-over.
const errPostcopyLost = "post-copy failed after the switch-over: the guest's memory is split between the source and the destination, so it cannot go on on either"

// postcopySource switches the guest to the destination now and serves
// the pages it still needs. The caller holds the control lock; the flags
// it passes are the migration's rollback state.
func (vm *VM) postcopySource(c *migrate.Conn, m *migration, o MigrateOptions, prev State, start time.Time, pending memory.PageSet, paused, disksClosed, committed *bool) (*MigrationResult, error) {
	m.update(func(i *MigrationInfo) { i.Phase = "postcopy" })
	pausedAt := time.Now()
	if prev == Running {
		if err := vm.pauseLocked(); err != nil {
			return nil, err
		}
		*paused = true
	}
	dirty, err := vm.moreDirty(pending)
	if err != nil {
		return nil, err
	}
	var pp postcopyPages
	for _, b := range dirty {
		pp.Pages = append(pp.Pages, b.AppendWords(nil))
	}
	var state persist.File
	if err := vm.saveMachineState(&state); err != nil {
		return nil, err
	}
	if err := vm.closeDisks(); err != nil {
		return nil, err
	}
	*disksClosed = true
	if err := c.Send(migrate.PostcopyStart, persist.MustMarshal(pp)); err != nil {
		return nil, err
	}
	if err := c.Send(migrate.State, state.Encode()); err != nil {
		return nil, err
	}
	// From here the destination may fault on pages (building its devices
	// touches guest memory): a reader queues its requests, this goroutine
	// answers them and does all the writing.
	in := make(chan inMsg, 64)
	go func() {
		var buf []byte
		for {
			t, p, err := c.Read(buf)
			if err != nil {
				in <- inMsg{err: err}
				return
			}
			in <- inMsg{t: t, p: append([]byte(nil), p...)}
			if t == migrate.PostcopyDone || t == migrate.Error {
				return
			}
		}
	}()
	var batch migrate.Batch
	sent := make([]*memory.Bitmap, len(dirty))
	for i, b := range dirty {
		sent[i] = memory.NewBitmap(b.Len())
	}
	serve := func(msg inMsg) error {
		gpa, n, err := migrate.ParsePageRequest(msg.p)
		if err != nil {
			return err
		}
		ri, first, err := vm.pageIndex(gpa, n)
		if err != nil {
			return err
		}
		// Pages already sent are on their way: the destination asks
		// twice when a page arrives while it is asking for it. Answering
		// again would only cost bandwidth, and once PostcopyDone is sent
		// the destination may already have hung up.
		batch.Reset()
		r := vm.mem.Regions()[ri]
		for p := first; p < first+uint64(n); {
			if sent[ri].Test(p) {
				p++
				continue
			}
			q := p
			for q < first+uint64(n) && !sent[ri].Test(q) {
				sent[ri].Set(q)
				q++
			}
			batch.Add(uint64(r.GPA)+p*memory.PageSize, int(q-p), r.Host[p*memory.PageSize:q*memory.PageSize])
			p = q
		}
		if batch.Len() == 0 {
			return nil
		}
		return c.Send(migrate.Pages, batch.Bytes())
	}
	// await answers requests until a message of type want arrives.
	await := func(want migrate.Type) error {
		for msg := range in {
			switch {
			case msg.err != nil:
				return fmt.Errorf("waiting for %s from the destination: %w", want, msg.err)
			case msg.t == migrate.Error:
				return fmt.Errorf("the destination failed: %s", msg.p)
			case msg.t == migrate.PageRequest:
				if err := serve(msg); err != nil {
					return err
				}
			case msg.t == want:
				return nil
			default:
				return fmt.Errorf("%w: unexpected %s during post-copy", migrate.ErrProtocol, msg.t)
			}
		}
		return io.ErrUnexpectedEOF
	}
	if err := await(migrate.Ready); err != nil {
		return nil, err
	}
	// The switch-over: nothing of the guest runs here again.
	*committed = true
	fail := func(err error) (*MigrationResult, error) {
		err = fmt.Errorf("%s: %w", errPostcopyLost, err)
		vm.requestStop(ExitError, err)
		return nil, err
	}
	if err := c.Send(migrate.Switch); err != nil {
		return fail(err)
	}
	if err := await(migrate.Running); err != nil {
		return fail(err)
	}
	downtime := time.Since(pausedAt)
	// Push the rest, answering requests first.
	for ri, r := range vm.mem.Regions() {
		pages := dirty[ri].Len()
		for p := uint64(0); p < pages; {
			for len(in) > 0 {
				msg := <-in
				if msg.err != nil || msg.t != migrate.PageRequest {
					return fail(fmt.Errorf("during post-copy: %v %s %s", msg.err, msg.t, msg.p))
				}
				if err := serve(msg); err != nil {
					return fail(err)
				}
			}
			if !dirty[ri].Test(p) || sent[ri].Test(p) {
				p++
				continue
			}
			q := p + 1
			for q < pages && q-p < 64 && dirty[ri].Test(q) && !sent[ri].Test(q) {
				q++
			}
			batch.Reset()
			for k := p; k < q; k++ {
				sent[ri].Set(k)
			}
			batch.Add(uint64(r.GPA)+p*memory.PageSize, int(q-p), r.Host[p*memory.PageSize:q*memory.PageSize])
			if err := c.Send(migrate.Pages, batch.Bytes()); err != nil {
				return fail(err)
			}
			m.update(func(i *MigrationInfo) { i.BytesSent = c.Sent() })
			p = q
		}
	}
	if err := c.Send(migrate.PostcopyDone); err != nil {
		return fail(err)
	}
	if err := await(migrate.PostcopyDone); err != nil {
		return fail(err)
	}
	res := &MigrationResult{URI: o.URI, BytesSent: c.Sent(), Total: time.Since(start), Downtime: downtime}
	m.update(func(i *MigrationInfo) { res.Rounds = i.Rounds; i.BytesSent = c.Sent() })
	vm.log.Info("migrated (post-copy)", "uri", o.URI, "bytes", res.BytesSent, "downtime", downtime)
	vm.requestStop(ExitMigrated, nil)
	return res, nil
}

type inMsg struct {
	t   migrate.Type
	p   []byte
	err error
}

// inRegion reports whether n pages at gpa lie in r, without the sum
// wrapping around for a gpa near 2^64 (gpa and n come from the peer).
func inRegion(r memory.Region, gpa uint64, n int) bool {
	start, end := uint64(r.GPA), uint64(r.End())
	return n >= 0 && gpa >= start && gpa < end && uint64(n) <= (end-gpa)/memory.PageSize
}

// pageIndex maps n pages at gpa to a region and its first page.
func (vm *VM) pageIndex(gpa uint64, n int) (int, uint64, error) {
	for i, r := range vm.mem.Regions() {
		if inRegion(r, gpa, n) {
			return i, (gpa - uint64(r.GPA)) / memory.PageSize, nil
		}
	}
	return 0, 0, fmt.Errorf("%w: pages %#x+%d outside guest memory", migrate.ErrProtocol, gpa, n)
}

// postcopyDest is the destination's side of a post-copy migration: guest
// memory registered with userfaultfd, a fault server and a reader that
// copies arriving pages in.
type postcopyDest struct {
	mem     *memory.Memory
	u       *uffd.FD
	out     *migrate.Sender
	missing []*memory.Bitmap // pages to fetch from the source
	have    []*memory.Bitmap // fetched pages
	asked   []*memory.Bitmap // pages requested
	stop    chan struct{}
	wake    int // eventfd that ends the fault server's poll
	done    sync.WaitGroup
	err     atomic.Pointer[error]
	vm      atomic.Pointer[VM]
	left    atomic.Int64 // missing pages not yet fetched

	// arrived is broadcast when pages come in, for fetch.
	mu      sync.Mutex
	arrived *sync.Cond
}

// startPostcopyDest discards the stale pages and arms userfaultfd on
// guest memory.
func startPostcopyDest(mem *memory.Memory, p []byte, out *migrate.Sender) (*postcopyDest, error) {
	var pp postcopyPages
	if err := persist.Unmarshal(p, &pp); err != nil {
		return nil, fmt.Errorf("post-copy pages: %w", err)
	}
	regions := mem.Regions()
	if len(pp.Pages) != len(regions) {
		return nil, fmt.Errorf("%w: post-copy bitmaps for %d regions, guest memory has %d", migrate.ErrProtocol, len(pp.Pages), len(regions))
	}
	d := &postcopyDest{mem: mem, out: out, stop: make(chan struct{})}
	d.arrived = sync.NewCond(&d.mu)
	for i, r := range regions {
		b, err := memory.BitmapFromWords(r.Size/memory.PageSize, pp.Pages[i])
		if err != nil {
			return nil, fmt.Errorf("%w: post-copy bitmap: %v", migrate.ErrProtocol, err)
		}
		d.missing = append(d.missing, b)
		d.have = append(d.have, memory.NewBitmap(b.Len()))
		d.asked = append(d.asked, memory.NewBitmap(b.Len()))
		d.left.Add(int64(b.Count()))
		// Drop the stale copies so that the guest's first touch faults.
		for pg := uint64(0); pg < b.Len(); pg++ {
			if b.Test(pg) {
				q := pg + 1
				for q < b.Len() && b.Test(q) {
					q++
				}
				if err := unix.Madvise(r.Host[pg*memory.PageSize:q*memory.PageSize], unix.MADV_DONTNEED); err != nil {
					return nil, fmt.Errorf("post-copy: discard stale pages: %w", err)
				}
				pg = q
			}
		}
	}
	u, err := uffd.New()
	if err != nil {
		return nil, err
	}
	d.u = u
	for _, r := range regions {
		// Nothing of guest memory may be registered twice; unregister on
		// failure is done by closing the fd.
		if err := u.Register(r.Host); err != nil {
			u.Close()
			return nil, err
		}
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		u.Close()
		return nil, err
	}
	d.wake = wake
	d.done.Add(1)
	go d.serveFaults()
	// The VMM's own accesses (devices reading rings and buffers) fetch
	// what they need before touching it, instead of faulting.
	mem.SetFetch(d.fetch)
	return d, nil
}

// fetch makes pages [off, off+n) of region ri present before the VMM
// touches them: it requests the missing ones and waits for them, in Go
// (where the runtime can stop this goroutine), not in a page fault.
func (d *postcopyDest) fetch(ri int, off, n uint64) {
	if d.left.Load() <= 0 || n == 0 {
		return
	}
	r := d.mem.Regions()[ri]
	first, last := off/memory.PageSize, (off+n-1)/memory.PageSize
	for pg := first; pg <= last; pg++ {
		if !d.missing[ri].Test(pg) || d.have[ri].Test(pg) {
			continue
		}
		if !d.asked[ri].Test(pg) {
			d.asked[ri].Set(pg)
			if err := d.out.Send(migrate.PageRequest, migrate.PageRequestPayload(uint64(r.GPA)+pg*memory.PageSize, 1)); err != nil {
				d.fail(err)
				return
			}
		}
		d.mu.Lock()
		for !d.have[ri].Test(pg) && d.err.Load() == nil {
			d.arrived.Wait()
		}
		d.mu.Unlock()
		if d.err.Load() != nil {
			return
		}
	}
}

// serveFaults answers fault events: a page known to be zero gets a zero
// page, a page the source still has is requested. It runs on its own
// thread and never touches guest memory.
func (d *postcopyDest) serveFaults() {
	defer d.done.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var addrs []uint64
	fds := []unix.PollFd{{Fd: int32(d.u.FD()), Events: unix.POLLIN}, {Fd: int32(d.wake), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			d.fail(err)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		var err error
		addrs, err = d.u.ReadFaults(addrs[:0])
		if err != nil && err != unix.EAGAIN {
			d.fail(err)
			return
		}
		for _, a := range addrs {
			if err := d.fault(a); err != nil {
				d.fail(err)
				return
			}
		}
	}
}

// fault resolves a fault at host address a.
func (d *postcopyDest) fault(a uint64) error {
	for ri, r := range d.mem.Regions() {
		base := uint64(uintptr(unsafePointer(r.Host)))
		if a < base || a >= base+r.Size {
			continue
		}
		pg := (a - base) / memory.PageSize
		page := r.Host[pg*memory.PageSize : (pg+1)*memory.PageSize]
		if !d.missing[ri].Test(pg) {
			// Never sent: it was zero at the source.
			if err := d.u.Zero(page); err != nil && !errors.Is(err, uffd.ErrExist) {
				return err
			}
			return nil
		}
		if d.have[ri].Test(pg) {
			return d.u.Wake(page)
		}
		if d.asked[ri].Test(pg) {
			return nil // on its way
		}
		d.asked[ri].Set(pg)
		return d.out.Send(migrate.PageRequest, migrate.PageRequestPayload(uint64(r.GPA)+pg*memory.PageSize, 1))
	}
	return fmt.Errorf("post-copy: fault at %#x outside guest memory", a)
}

// put copies arriving pages in (UFFDIO_COPY wakes whoever waits on them).
func (d *postcopyDest) put(gpa uint64, n int, data []byte) error {
	for ri, r := range d.mem.Regions() {
		if !inRegion(r, gpa, n) {
			continue
		}
		first := (gpa - uint64(r.GPA)) / memory.PageSize
		for k := uint64(0); k < uint64(n); k++ {
			pg := first + k
			if !d.missing[ri].Test(pg) || d.have[ri].Test(pg) {
				continue
			}
			dst := r.Host[pg*memory.PageSize : (pg+1)*memory.PageSize]
			var err error
			if data == nil {
				err = d.u.Zero(dst)
			} else {
				err = d.u.Copy(dst, data[k*memory.PageSize:(k+1)*memory.PageSize])
			}
			if err != nil && !errors.Is(err, uffd.ErrExist) {
				return err
			}
			d.have[ri].Set(pg)
			d.left.Add(-1)
		}
		d.mu.Lock()
		d.arrived.Broadcast()
		d.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%w: pages at %#x outside guest memory", migrate.ErrProtocol, gpa)
}

// fail records the first error and stops the VM loudly.
func (d *postcopyDest) fail(err error) {
	err = fmt.Errorf("%s: %w", errPostcopyLost, err)
	if !d.err.CompareAndSwap(nil, &err) {
		return
	}
	d.mu.Lock()
	d.arrived.Broadcast()
	d.mu.Unlock()
	if vm := d.vm.Load(); vm != nil {
		vm.log.Error(errPostcopyLost, "err", err)
		vm.fail(err)
	}
	// Let blocked vCPUs out (they see the VM stopping): the guest is
	// lost, what they read no longer matters.
	for ri, r := range d.mem.Regions() {
		for pg := uint64(0); pg < d.missing[ri].Len(); pg++ {
			if d.missing[ri].Test(pg) && !d.have[ri].Test(pg) {
				d.u.Zero(r.Host[pg*memory.PageSize : (pg+1)*memory.PageSize])
			}
		}
	}
}

// finish disarms userfaultfd once every page is in.
func (d *postcopyDest) finish() {
	d.mem.SetFetch(nil)
	unix.Write(d.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	d.done.Wait()
	for _, r := range d.mem.Regions() {
		d.u.Unregister(r.Host)
	}
	d.u.Close()
	unix.Close(d.wake)
}
