package vmm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/godwit-vm/godwit/disk"
	"github.com/godwit-vm/godwit/kvm"
	"github.com/godwit-vm/godwit/memory"
	"github.com/godwit-vm/godwit/persist"
)

// maxChain bounds a chain of diff snapshots.
const maxChain = 64

// restoring is a snapshot being loaded into a new VM.
type restoring struct {
	dir   string
	mode  memory.FileMode
	file  *persist.File
	sc    snapshotConfig
	ms    machineState
	mst   memoryState
	cpuid [][]kvm.CPUIDEntry2
	// chain is the snapshots whose memory makes up this one's, the full
	// one first, this one last.
	chain []chainLink
	// created lists the disk overlays this restore made, removed if it
	// fails.
	created []string
	// macs are NICs given a new MAC on restore.
	macs []macOverride
	// mem, when set, is guest memory already loaded (a migration's
	// destination); otherwise it comes from the chain's memory files.
	mem *memory.Memory
	// overlayUID and overlayGID own the overlays it creates (when
	// overlayUID > 0).
	overlayUID, overlayGID int
}

type macOverride struct {
	nic int
	mac string
}

type chainLink struct {
	dir string
	mst memoryState
}

// Restore builds a VM from the snapshot in o.Snapshot: the same machine
// (vCPUs, memory, devices in the same slots), its guest memory and every
// device's state as they were at the snapshot's instant, with host-local
// backends (disk overlays, TAPs, the console) from o. The VM is Created:
// Start runs it from exactly where it was, StartPaused leaves it paused.
// Every problem with the snapshot or the host is one error, and nothing
// is left running or half-made.
func Restore(o RestoreOptions) (*VM, error) {
	rs, cfg, err := openSnapshot(o)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", o.Snapshot, err)
	}
	vm, err := build(cfg, rs)
	if err != nil {
		rs.cleanup()
		return nil, fmt.Errorf("restore %s: %w", o.Snapshot, err)
	}
	vm.lastSnapshot, vm.restoredFrom = rs.dir, rs.dir
	for _, l := range rs.chain {
		vm.restoredChain = append(vm.restoredChain, l.dir)
	}
	if vm.pci != nil {
		// Restored devices are quiet until the VM runs.
		vm.pci.paused = true
	}
	return vm, nil
}

func (rs *restoring) cleanup() {
	for _, p := range rs.created {
		os.Remove(p)
	}
}

// readSnapshot reads and checks a snapshot directory's state file.
func readSnapshot(dir string) (*persist.File, *snapshotConfig, *memoryState, []byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, nil, fmt.Errorf("%s is not a snapshot: it has no %s file", dir, StateFile)
	}
	if err != nil {
		return nil, nil, nil, nil, err
	}
	f, err := persist.Decode(b)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	cs, ok := f.Get(secConfig)
	if !ok || cs.Version != verConfig {
		return nil, nil, nil, nil, fmt.Errorf("%w: state file has no configuration section of version %d", persist.ErrCorrupt, verConfig)
	}
	var sc snapshotConfig
	dec := json.NewDecoder(bytes.NewReader(cs.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: configuration section: %v", persist.ErrCorrupt, err)
	}
	if cj, err := os.ReadFile(filepath.Join(dir, ConfigFile)); err == nil && !bytes.Equal(bytes.TrimSpace(cj), bytes.TrimSpace(cs.Data)) {
		return nil, nil, nil, nil, fmt.Errorf("%s does not match the configuration in the state file (was it edited?)", filepath.Join(dir, ConfigFile))
	}
	var mst memoryState
	if err := sectionValue(f, secMemory, verMemory, &mst); err != nil {
		return nil, nil, nil, nil, err
	}
	return f, &sc, &mst, cs.Data, nil
}

// openSnapshot reads the snapshot and prepares everything host-local the
// new VM needs, checking what can go wrong before anything is built.
func openSnapshot(o RestoreOptions) (*restoring, Config, error) {
	var cfg Config
	if o.Snapshot == "" {
		return nil, cfg, errors.New("no snapshot directory given")
	}
	dir, err := filepath.Abs(o.Snapshot)
	if err != nil {
		return nil, cfg, err
	}
	rs := &restoring{dir: dir, overlayUID: o.OverlayUID, overlayGID: o.OverlayGID}
	switch o.Memory {
	case "", MemoryCopy:
		rs.mode = memory.FileCopy
	case MemoryMmap:
		rs.mode = memory.FileMap
	default:
		return nil, cfg, fmt.Errorf("unknown memory restore mode %q: use copy or mmap", o.Memory)
	}
	f, sc, mst, _, err := readSnapshot(dir)
	if err != nil {
		return nil, cfg, err
	}
	rs.file, rs.sc, rs.mst = f, *sc, *mst
	if err := sectionValue(f, secMachine, verMachine, &rs.ms); err != nil {
		return nil, cfg, err
	}
	ms := &rs.ms
	switch {
	case sc.CPUs < 1 || uint32(sc.CPUs) != ms.CPUs || len(ms.CPUID) != sc.CPUs:
		return nil, cfg, fmt.Errorf("%w: the configuration has %d vCPUs, the machine state %d", errSnapshot, sc.CPUs, ms.CPUs)
	case sc.Memory != ms.Memory || mst.Size != ms.Memory:
		return nil, cfg, fmt.Errorf("%w: the configuration has %d bytes of memory, the machine state %d, the memory section %d", errSnapshot, sc.Memory, ms.Memory, mst.Size)
	}
	for i := 0; i < sc.CPUs; i++ {
		if _, ok := f.Get(vcpuSection(i)); !ok {
			return nil, cfg, fmt.Errorf("%w: no state for vcpu %d", errSnapshot, i)
		}
	}
	rs.cpuid = ms.CPUID
	if err := rs.loadChain(); err != nil {
		return nil, cfg, err
	}
	if err := checkHostCPUID(o.KVMPath, ms.CPUID); err != nil {
		return nil, cfg, err
	}
	cfg = Config{CPUs: sc.CPUs, Memory: sc.Memory, Kernel: sc.Kernel, Initrd: sc.Initrd, Cmdline: sc.Cmdline,
		RNG: sc.RNG, DirtyRing: sc.DirtyRing, Console: o.Console, Input: o.Input, Logger: o.Logger, KVMPath: o.KVMPath}
	if len(o.Disks) > len(sc.Disks) {
		return nil, cfg, fmt.Errorf("%d disks given, the snapshot has %d", len(o.Disks), len(sc.Disks))
	}
	for i, sd := range sc.Disks {
		var over string
		if i < len(o.Disks) {
			over = o.Disks[i]
		}
		dc, err := rs.prepareDisk(i, sd, over)
		if err != nil {
			rs.cleanup()
			return nil, cfg, err
		}
		cfg.Disks = append(cfg.Disks, dc)
	}
	if cfg.Nets, err = rs.nets(o); err != nil {
		rs.cleanup()
		return nil, cfg, err
	}
	return rs, cfg, nil
}

// nets is the NICs of the restored VM: the snapshot's, with backends and
// MACs overridden by o.Nets in order. A new MAC is applied after the
// device state is loaded (rs.macs).
func (rs *restoring) nets(o RestoreOptions) ([]NetConfig, error) {
	if len(o.Nets) > len(rs.sc.Nets) {
		return nil, fmt.Errorf("%d NICs given, the VM has %d", len(o.Nets), len(rs.sc.Nets))
	}
	var nets []NetConfig
	for i, sn := range rs.sc.Nets {
		nc := NetConfig{Tap: sn.Tap, Bridge: sn.Bridge, User: sn.User, MAC: sn.MAC}
		if i < len(o.Nets) {
			on := o.Nets[i]
			if on.Tap != "" || on.Bridge != "" || on.User != nil || on.TapFile != nil {
				nc.Tap, nc.Bridge, nc.User, nc.TapFile = on.Tap, on.Bridge, on.User, on.TapFile
			}
			if on.MAC != "" {
				// The device is rebuilt with the old MAC (its state
				// must match) and then given the new one.
				if _, err := parseMAC(on.MAC); err != nil {
					return nil, fmt.Errorf("NIC %d: %w", i, err)
				}
				rs.macs = append(rs.macs, macOverride{i, on.MAC})
			}
		}
		nets = append(nets, nc)
	}
	return nets, nil
}

// loadChain follows a diff snapshot's parents to the full snapshot at
// the root and checks each memory file.
func (rs *restoring) loadChain() error {
	link := chainLink{dir: rs.dir, mst: rs.mst}
	seen := map[string]bool{}
	for {
		if seen[link.dir] {
			return fmt.Errorf("%w: the diff snapshot chain loops at %s", errSnapshot, link.dir)
		}
		seen[link.dir] = true
		if len(rs.chain) >= maxChain {
			return fmt.Errorf("%w: diff snapshot chain longer than %d", errSnapshot, maxChain)
		}
		if link.mst.Size != rs.mst.Size {
			return fmt.Errorf("%w: snapshot %s has %d bytes of memory, its child %d", errSnapshot, link.dir, link.mst.Size, rs.mst.Size)
		}
		mf := filepath.Join(link.dir, MemoryFile)
		st, err := os.Stat(mf)
		if err != nil {
			return fmt.Errorf("memory file: %w", err)
		}
		if uint64(st.Size()) != link.mst.Size {
			return fmt.Errorf("memory file %s is %d bytes, the snapshot's VM has %d bytes of RAM", mf, st.Size(), link.mst.Size)
		}
		if link.mst.Diff {
			if _, err := rs.pageSet(link.mst); err != nil {
				return fmt.Errorf("%w: %s: %v", errSnapshot, link.dir, err)
			}
		}
		rs.chain = append([]chainLink{link}, rs.chain...)
		if !link.mst.Diff {
			return nil
		}
		if link.mst.Parent == "" {
			return fmt.Errorf("%w: diff snapshot %s names no parent", errSnapshot, link.dir)
		}
		_, _, pmst, _, err := readSnapshot(link.mst.Parent)
		if err != nil {
			return fmt.Errorf("parent of diff snapshot %s: %w", link.dir, err)
		}
		link = chainLink{dir: link.mst.Parent, mst: *pmst}
	}
}

// pageSet turns a diff's saved page bitmaps into a memory.PageSet laid
// out like guest RAM of its size.
func (rs *restoring) pageSet(mst memoryState) (memory.PageSet, error) {
	regions := ramRegions(mst.Size)
	if len(mst.Pages) != len(regions) {
		return nil, fmt.Errorf("page bitmaps for %d memory regions, the VM has %d", len(mst.Pages), len(regions))
	}
	var set memory.PageSet
	for i, words := range mst.Pages {
		b, err := memory.BitmapFromWords(regions[i]/memory.PageSize, words)
		if err != nil {
			return nil, err
		}
		set = append(set, b)
	}
	return set, nil
}

// ramRegions returns the sizes of the RAM regions of a VM with size bytes
// (memory.New's layout).
func ramRegions(size uint64) []uint64 {
	low := min(size, uint64(memory.LowMemEnd))
	if size > low {
		return []uint64{low, size - low}
	}
	return []uint64{low}
}

// memory loads guest RAM: the chain's full snapshot, then each diff's
// pages over it.
func (rs *restoring) memory() (*memory.Memory, error) {
	if rs.mem != nil {
		return rs.mem, nil
	}
	base := filepath.Join(rs.chain[0].dir, MemoryFile)
	if rs.mode == memory.FileMap {
		if err := checkMappable(base); err != nil {
			return nil, err
		}
	}
	m, err := memory.NewFromFile(rs.mst.Size, base, rs.mode)
	if err != nil {
		return nil, err
	}
	for _, l := range rs.chain[1:] {
		set, err := rs.pageSet(l.mst)
		if err == nil {
			err = m.ApplyFile(filepath.Join(l.dir, MemoryFile), set)
		}
		if err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// v9fsMagic is the statfs type of a 9p filesystem.
const v9fsMagic = 0x01021997

// checkMappable refuses to map a memory file from a filesystem where
// mmap is unreliable, with a message saying what to do instead.
func checkMappable(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return err
	}
	if st.Type == v9fsMagic {
		return fmt.Errorf("memory file %s is on a 9p filesystem, where mmap is unreliable: restore with --memory-restore copy, or put the snapshot on a local filesystem such as /dev/shm", path)
	}
	return nil
}

// checkHostCPUID checks that this host offers every CPU feature the
// snapshot's vCPUs saw: it builds the CPUID tables a VM of the same
// shape would get here (what KVM supports, as godwit presents it) and
// compares the feature bits.
func checkHostCPUID(path string, saved [][]kvm.CPUIDEntry2) error {
	if path == "" {
		path = kvm.DefaultPath
	}
	sys, err := kvm.OpenPath(path)
	if err != nil {
		return err
	}
	defer sys.Close()
	host, err := hostCPUID(sys, len(saved))
	if err != nil {
		return err
	}
	for i := range saved {
		if err := checkCPUID(saved[i], host[i]); err != nil {
			return err
		}
	}
	return nil
}

// prepareDisk readies disk i's image for the restored VM, as its policy
// says, and returns its config.
func (rs *restoring) prepareDisk(i int, sd snapshotDisk, over string) (DiskConfig, error) {
	dc := DiskConfig{Path: sd.Image, Format: sd.Format, ReadOnly: sd.ReadOnly, Serial: sd.Serial}
	usesImage := over == "" || rs.sc.Policy == DisksOverlay && !sd.ReadOnly
	if _, err := os.Stat(sd.Image); err != nil && usesImage {
		return dc, fmt.Errorf("disk %d: the snapshot's disk state %s is missing", i, sd.Image)
	}
	switch {
	case sd.ReadOnly:
		if over != "" {
			dc.Path = over
		}
	case rs.sc.Policy == DisksInternal:
		if over != "" {
			dc.Path = over
		}
		img, err := disk.Open(dc.Path, disk.OpenOptions{Format: disk.FormatQcow2})
		if err != nil {
			return dc, fmt.Errorf("disk %d: %w", i, err)
		}
		q, _ := img.(*disk.Qcow2)
		if q == nil {
			img.Close()
			return dc, fmt.Errorf("disk %d: %s is not qcow2", i, dc.Path)
		}
		err = q.ApplySnapshot(sd.Internal)
		img.Close()
		if err != nil {
			return dc, fmt.Errorf("disk %d: revert %s to internal snapshot %s: %w", i, dc.Path, sd.Internal, err)
		}
	default:
		ov := over
		if ov == "" {
			ov = filepath.Join(rs.dir, fmt.Sprintf("disk%d-restore-%d.qcow2", i, time.Now().UnixNano()))
		}
		if _, err := os.Lstat(ov); err == nil {
			return dc, fmt.Errorf("disk %d: %s already exists: a restore creates its disk as a new overlay on the snapshot's disk state; give a path that does not exist", i, ov)
		}
		if err := disk.Overlay(sd.Image, ov); err != nil {
			return dc, fmt.Errorf("disk %d: create overlay %s: %w", i, ov, err)
		}
		rs.created = append(rs.created, ov)
		if rs.overlayUID > 0 {
			gid := rs.overlayGID
			if gid <= 0 {
				gid = rs.overlayUID
			}
			// Lchown: the folder may be writable by that uid.
			if err := os.Lchown(ov, rs.overlayUID, gid); err != nil {
				return dc, fmt.Errorf("disk %d: give overlay %s to uid %d: %w", i, ov, rs.overlayUID, err)
			}
		}
		dc.Path, dc.Format = ov, ""
	}
	info, err := disk.ImageInfo(dc.Path)
	if err != nil {
		return dc, fmt.Errorf("disk %d: %w", i, err)
	}
	if info.VirtualSize != sd.Size {
		return dc, fmt.Errorf("disk %d: %s is %d bytes, the snapshot's disk was %d bytes", i, dc.Path, info.VirtualSize, sd.Size)
	}
	return dc, nil
}

// load puts the snapshot's machine, device and vCPU state into vm, which
// build made with the snapshot's configuration.
func (rs *restoring) load(vm *VM) error {
	f := rs.file
	known := map[string]bool{secConfig: true, secMachine: true, secMemory: true}
	for i := range vm.vcpus {
		known[vcpuSection(i)] = true
	}
	devs := vm.persistents()
	for _, p := range devs {
		known[p.id] = true
		if _, ok := f.Get(p.id); !ok {
			return fmt.Errorf("%w: no state for device %s (the snapshot's configuration and state disagree)", errSnapshot, p.id)
		}
	}
	for _, id := range f.IDs() {
		if !known[id] {
			return fmt.Errorf("%w: state for device %s, which this VM does not have", errSnapshot, id)
		}
	}
	if err := vm.loadMachine(&rs.ms); err != nil {
		return err
	}
	for _, p := range devs {
		s, _ := f.Get(p.id)
		if err := p.restore(s.Version, s.Data); err != nil {
			return fmt.Errorf("restore %s: %w", p.id, err)
		}
	}
	vm.pci.root.Remap()
	// Clamped: another host's wall clock may be a little off ours.
	elapsed := min(max(time.Since(time.Unix(0, rs.ms.WallNanos)), 0), 24*time.Hour)
	for i, c := range vm.vcpus {
		var s vcpuState
		if err := sectionValue(f, vcpuSection(i), verVCPU, &s); err != nil {
			return err
		}
		if err := vm.loadVCPU(c, &s, elapsed); err != nil {
			return err
		}
	}
	if err := vm.loadClock(&rs.ms, elapsed); err != nil {
		return err
	}
	for _, o := range rs.macs {
		mac, _ := parseMAC(o.mac)
		if err := vm.pci.net(o.nic).SetMAC(mac); err != nil {
			return fmt.Errorf("NIC %d: %w", o.nic, err)
		}
		vm.cfg.Nets[o.nic].MAC = o.mac
	}
	for _, c := range vm.vcpus {
		// Tell the guest's kvmclock it was stopped (no soft-lockup
		// warning for the time the snapshot sat on disk).
		_ = c.cpu.KVMClockCtrl()
	}
	return nil
}
