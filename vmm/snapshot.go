package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/persist"
)

// A snapshot is a directory (SNAPSHOTS.md in this package's folder has
// the details):
//
//	DIR/state        the state file (persist.File): machine, vCPUs, memory
//	                 description, the VM's configuration, one section per device
//	DIR/memory       guest RAM, sparse (holes where pages are zero; a diff
//	                 holds only the pages written since its parent)
//	DIR/config.json  the configuration, readable (a copy of the "config" section)
//
// Files are written under temporary names and renamed into place, state
// last: a directory with a state file holds a complete snapshot.
const (
	StateFile  = "state"
	MemoryFile = "memory"
	ConfigFile = "config.json"

	secConfig = "config"
	verConfig = 1
)

// snapshotConfig is what a restore needs to rebuild the machine: the
// VM's configuration and, per disk, where its state at the snapshot's
// instant lives.
type snapshotConfig struct {
	CPUs    int    `json:"cpus"`
	Memory  uint64 `json:"memory"`
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	RNG     bool   `json:"rng,omitempty"`
	// Shared is the source's memory backing (informational).
	Shared bool           `json:"shared_memory,omitempty"`
	Disks  []snapshotDisk `json:"disks,omitempty"`
	Nets   []snapshotNet  `json:"nets,omitempty"`
	Policy DiskPolicy     `json:"disk_policy"`
	// DirtyRing is the source's Config.DirtyRing (kept by restores).
	DirtyRing int              `json:"dirty_ring,omitempty"`
	Type      SnapshotType     `json:"type"`
	Taken     time.Time        `json:"taken"`
	Extra     *json.RawMessage `json:"extra,omitempty"`
}

type snapshotDisk struct {
	// Image is the disk's state at the snapshot: with the overlay policy
	// a frozen image (nothing writes it any more), with the internal
	// policy the live image holding internal snapshot Internal.
	Image    string `json:"image"`
	Format   string `json:"format,omitempty"`
	ReadOnly bool   `json:"readonly,omitempty"`
	Serial   string `json:"serial,omitempty"`
	Internal string `json:"internal_snapshot,omitempty"`
	Size     int64  `json:"size"`
	// Migrate says a migration copies the disk (MigrateDisks) rather
	// than the destination opening the same path.
	Migrate bool `json:"migrate,omitempty"`
}

type snapshotNet struct {
	Tap    string         `json:"tap,omitempty"`
	Bridge string         `json:"bridge,omitempty"`
	User   *UserNetConfig `json:"user,omitempty"`
	MAC    string         `json:"mac"`
}

// Snapshot saves the VM into o.Dir. A running VM is paused for as long
// as it takes (vCPUs parked, devices drained, disk metadata flushed),
// then resumed unless o.LeavePaused. On any failure nothing is left in
// o.Dir that looks like a snapshot, the VM's disks are as they were, and
// the VM runs on (or stays paused, as it was).
func (vm *VM) Snapshot(o SnapshotOptions) (*SnapshotResult, error) {
	prev, err := vm.life.begin("snapshot", Running, Paused)
	if err != nil {
		return nil, err
	}
	defer vm.life.end()
	if o.Type == "" {
		o.Type = SnapshotFull
	}
	if o.Disks == "" {
		o.Disks = DisksOverlay
	}
	if err := vm.checkSnapshotOptions(&o); err != nil {
		return nil, err
	}
	if err := vm.life.move(Snapshotting); err != nil {
		return nil, err
	}
	vm.op.Store(&Operation{Kind: "snapshot", Total: vm.mem.Size()})
	defer vm.op.Store(nil)
	start := time.Now()
	if prev == Running {
		if err := vm.pauseLocked(); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}
	res, err := vm.snapshotPaused(o)
	after := Paused
	if prev == Running && !o.LeavePaused {
		after = Running
	}
	if merr := vm.life.move(after); merr != nil {
		// The VM stopped meanwhile (it cannot: vCPUs are parked), or a bug.
		return nil, errors.Join(err, merr)
	}
	if after == Running {
		vm.resumeLocked()
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	res.Paused = time.Since(start)
	if after == Paused {
		res.Paused = 0
	}
	return res, nil
}

func (vm *VM) checkSnapshotOptions(o *SnapshotOptions) error {
	switch o.Type {
	case SnapshotFull:
	case SnapshotDiff:
		if vm.lastSnapshot == "" || !vm.dirtyLog {
			return fmt.Errorf("snapshot: %w: a diff snapshot needs a parent: take a full snapshot of this VM first (or restore it from one)", errors.ErrUnsupported)
		}
	default:
		return fmt.Errorf("snapshot: %w: unknown type %q: use full or diff", errors.ErrUnsupported, o.Type)
	}
	switch o.Disks {
	case DisksOverlay:
	case DisksInternal:
		for i, d := range vm.cfg.Disks {
			if d.ReadOnly {
				continue
			}
			if _, ok := vm.pci.disk(i).img.(*disk.Qcow2); !ok {
				return fmt.Errorf("snapshot: %w: disk %d (%s) is not qcow2: internal disk snapshots need qcow2 (use disks=overlay)", errors.ErrUnsupported, i, d.Path)
			}
		}
	default:
		return fmt.Errorf("snapshot: %w: unknown disk policy %q: use overlay or internal", errors.ErrUnsupported, o.Disks)
	}
	if o.Dir == "" {
		return fmt.Errorf("snapshot: %w: no directory given", errors.ErrUnsupported)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	o.Dir = dir
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("snapshot: %w: directory %s is not empty", fs.ErrExist, dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// snapshotPaused writes the snapshot of a paused VM. The caller holds
// the control lock.
func (vm *VM) snapshotPaused(o SnapshotOptions) (res *SnapshotResult, err error) {
	dir := o.Dir
	created := false
	if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		created = true
	}
	var undoDisks func()
	var sel memory.PageSet
	defer func() {
		if err == nil {
			return
		}
		if undoDisks != nil {
			undoDisks()
		}
		// A failed diff gives back the pages it collected, so the next
		// diff still has them.
		for i, b := range sel {
			vm.mem.DirtyBitmap(i).OrWords(b.AppendWords(nil))
		}
		for _, n := range []string{StateFile, MemoryFile, ConfigFile, StateFile + ".tmp", MemoryFile + ".tmp", ConfigFile + ".tmp"} {
			os.Remove(filepath.Join(dir, n))
		}
		if created {
			os.Remove(dir)
		}
	}()
	var f persist.File
	if err := vm.saveMachineState(&f); err != nil {
		return nil, err
	}
	// Memory: everything (full) or what was written since the parent
	// (diff): KVM's dirty log ORed with the VMM's own bitmap.
	mst := memoryState{Size: vm.mem.Size()}
	if o.Type == SnapshotDiff {
		sel, err = vm.collectDirty()
		if err != nil {
			return nil, err
		}
		mst.Diff, mst.Parent = true, vm.lastSnapshot
		for _, b := range sel {
			mst.Pages = append(mst.Pages, b.AppendWords(nil))
		}
	}
	memTmp := filepath.Join(dir, MemoryFile+".tmp")
	mf, err := os.OpenFile(memTmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	written, err := vm.mem.WriteFile(mf, sel, o.Type == SnapshotDiff, func(done, total uint64) {
		vm.op.Store(&Operation{Kind: "snapshot", Done: done, Total: total})
		if o.Progress != nil {
			o.Progress(done, total)
		}
	})
	if err == nil {
		err = mf.Sync()
	}
	if cerr := mf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write memory file: %w", err)
	}
	if err := f.AddValue(secMemory, verMemory, mst); err != nil {
		return nil, err
	}
	// Disks: their state at this instant.
	sc, undo, err := vm.snapshotDisks(o)
	undoDisks = undo
	if err != nil {
		return nil, err
	}
	sc.Type = o.Type
	cj, err := json.MarshalIndent(sc, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := f.Add(secConfig, verConfig, cj); err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(dir, ConfigFile+".tmp"), append(cj, '\n')); err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(dir, StateFile+".tmp"), f.Encode()); err != nil {
		return nil, err
	}
	for _, n := range []string{MemoryFile, ConfigFile, StateFile} {
		if err := os.Rename(filepath.Join(dir, n+".tmp"), filepath.Join(dir, n)); err != nil {
			return nil, err
		}
	}
	syncDir(dir)
	// From here on the snapshot stands: the disks stay switched, and the
	// next diff is relative to this one.
	if err := vm.startDirtyLog(); err != nil {
		vm.log.Warn("dirty logging could not be started: the next snapshot of this VM must be full", "err", err)
		vm.lastSnapshot = ""
	} else {
		vm.lastSnapshot = dir
	}
	vm.snapshots++
	return &SnapshotResult{Dir: dir, Type: o.Type, Parent: mst.Parent, MemoryBytes: vm.mem.Size(), WrittenBytes: written}, nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// saveMachineState adds the machine, vCPU and device sections of a
// paused VM to f.
func (vm *VM) saveMachineState(f *persist.File) error {
	ms, err := vm.saveMachine()
	if err != nil {
		return err
	}
	for i, c := range vm.vcpus {
		s, err := vm.saveVCPU(c)
		if err != nil {
			return err
		}
		if err := f.AddValue(vcpuSection(i), verVCPU, s); err != nil {
			return err
		}
	}
	for _, p := range vm.persistents() {
		b, err := p.save()
		if err != nil {
			return fmt.Errorf("save %s: %w", p.id, err)
		}
		if err := f.Add(p.id, p.version, b); err != nil {
			return err
		}
		ms.Devices = append(ms.Devices, p.id)
	}
	return f.AddValue(secMachine, verMachine, ms)
}

// startDirtyLog turns on KVM's dirty logging on every memory slot (the
// first time) and clears what was logged so far, with the VMM's own
// bitmap: from now on both record what the guest and the devices write.
func (vm *VM) startDirtyLog() error {
	if !vm.dirtyLog {
		vm.enableManualDirtyProtect()
		for i, r := range vm.mem.Regions() {
			if err := vm.kvm.SetUserMemoryRegion(uint32(i), kvm.MemLogDirtyPages, uint64(r.GPA), r.Size, r.Host); err != nil {
				return err
			}
		}
		vm.dirtyLog = true
	} else if _, err := vm.collectDirty(); err != nil {
		return err
	}
	for i := range vm.mem.Regions() {
		vm.mem.DirtyBitmap(i).Clear()
	}
	return nil
}

// clearChunk is how many pages one KVM_CLEAR_DIRTY_LOG covers.
const clearChunk = 1 << 18

func anySet(w []uint64) bool {
	for _, x := range w {
		if x != 0 {
			return true
		}
	}
	return false
}

// noManualDirty, set by tests, keeps KVM's legacy dirty log (each
// KVM_GET_DIRTY_LOG write-protects the slot again).
var noManualDirty bool

// enableManualDirtyProtect turns on KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
// where KVM has it, before dirty logging starts: KVM_GET_DIRTY_LOG then
// only reads the log, and collectDirty write-protects just the pages it
// got with KVM_CLEAR_DIRTY_LOG (cheaper than KVM redoing the whole slot).
func (vm *VM) enableManualDirtyProtect() {
	if vm.manualDirty || noManualDirty || vm.cfg.DirtyRing != 0 || vm.kvm.CheckExtension(kvm.CapManualDirtyLogProtect2)&kvm.DirtyLogManualProtectEnable == 0 {
		return
	}
	if err := vm.kvm.EnableCap(kvm.CapManualDirtyLogProtect2, kvm.DirtyLogManualProtectEnable); err != nil {
		vm.log.Debug("manual dirty-log protection unavailable", "err", err)
		return
	}
	vm.manualDirty = true
}

// collectDirty returns (and resets) the pages written since dirty
// logging started or was last collected: KVM's log ORed with the VMM's.
func (vm *VM) collectDirty() (memory.PageSet, error) {
	var set memory.PageSet
	for i, r := range vm.mem.Regions() {
		words := make([]uint64, kvm.DirtyBitmapLen(r.Size))
		if vm.cfg.DirtyRing != 0 {
			vm.takeRingDirty(i, words)
		} else if err := vm.kvm.GetDirtyLog(uint32(i), words); err != nil {
			return nil, err
		}
		if vm.manualDirty {
			// KVM_GET_DIRTY_LOG left the pages writable: write-protect
			// exactly those it reported, so the next writes are logged.
			pages := r.Size / memory.PageSize
			for first := uint64(0); first < pages; first += clearChunk {
				n := min(clearChunk, pages-first)
				chunk := words[first/64 : (first+n+63)/64]
				if !anySet(chunk) {
					continue
				}
				if err := vm.kvm.ClearDirtyLog(uint32(i), first, uint32(n), chunk); err != nil {
					return nil, err
				}
			}
		}
		vm.mem.DirtyBitmap(i).TakeInto(words)
		b, err := memory.BitmapFromWords(r.Size/memory.PageSize, words)
		if err != nil {
			return nil, err
		}
		set = append(set, b)
	}
	return set, nil
}
