package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/godwit-vm/godwit/disk"
)

// snapshotDisks records each disk's state at the snapshot's instant, by
// the policy o.Disks, and returns the snapshot's configuration with it,
// and a function that undoes what it did (when a later step of the
// snapshot fails). The VM is paused and its disks flushed.
//
// Overlay policy: the image the disk was writing is frozen (the snapshot
// refers to it; nothing writes it again) and the VM goes on writing a new
// qcow2 overlay on top of it, created next to it as STEM-snapN.qcow2.
// Internal policy: each writable qcow2 disk gets an internal snapshot
// named godwit-DIRNAME-TIME; the VM goes on writing the same image.
func (vm *VM) snapshotDisks(o SnapshotOptions) (*snapshotConfig, func(), error) {
	sc := vm.machineConfig()
	sc.Policy = o.Disks
	var undo []func()
	undoAll := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for i := range vm.cfg.Disks {
		d := &vm.cfg.Disks[i]
		pd := vm.pci.disk(i)
		abs, err := filepath.Abs(d.Path)
		if err != nil {
			undoAll()
			return nil, nil, err
		}
		sd := snapshotDisk{Image: abs, Format: d.Format, ReadOnly: d.ReadOnly, Serial: d.Serial, Size: pd.img.Size()}
		if err := pd.img.Flush(); err != nil && !d.ReadOnly {
			undoAll()
			return nil, nil, fmt.Errorf("disk %d (%s): flush: %w", i, d.Path, err)
		}
		switch {
		case d.ReadOnly:
		case o.Disks == DisksInternal:
			q := pd.img.(*disk.Qcow2)
			name := fmt.Sprintf("godwit-%s-%d", filepath.Base(o.Dir), time.Now().UnixNano())
			if err := q.CreateSnapshot(name); err != nil {
				undoAll()
				return nil, nil, fmt.Errorf("disk %d (%s): internal snapshot: %w", i, d.Path, err)
			}
			sd.Internal = name
			undo = append(undo, func() { q.DeleteSnapshot(name) })
		default:
			ov, err := nextOverlayPath(abs)
			if err != nil {
				undoAll()
				return nil, nil, fmt.Errorf("disk %d: %w", i, err)
			}
			if err := vm.moveDiskOnto(i, abs, ov); err != nil {
				undoAll()
				return nil, nil, fmt.Errorf("disk %d (%s): %w", i, d.Path, err)
			}
			sd.Format = "" // detected from the header on restore
			old := *d
			undo = append(undo, func() {
				if err := vm.moveDiskBack(i, old); err != nil {
					vm.log.Error("snapshot failed and its disk overlay could not be undone; the VM writes the overlay", "disk", i, "overlay", ov, "err", err)
					return
				}
				os.Remove(ov)
			})
			d.Path, d.Format = ov, ""
		}
		sc.Disks = append(sc.Disks, sd)
	}
	return sc, undoAll, nil
}

// machineConfig is the VM's configuration as a snapshot or a migration
// stream carries it, without disks.
func (vm *VM) machineConfig() *snapshotConfig {
	sc := &snapshotConfig{CPUs: vm.cfg.CPUs, Memory: vm.cfg.Memory, Kernel: vm.cfg.Kernel, Initrd: vm.cfg.Initrd,
		Cmdline: vm.cfg.Cmdline, RNG: vm.cfg.RNG, Shared: vm.cfg.SharedMemory, DirtyRing: vm.cfg.DirtyRing, Taken: time.Now().UTC()}
	for i, n := range vm.cfg.Nets {
		sn := snapshotNet{Tap: n.Tap, Bridge: n.Bridge, User: n.User, MAC: n.MAC}
		if d := vm.pci.net(i); d != nil {
			sn.MAC = d.MAC().String()
		}
		sc.Nets = append(sc.Nets, sn)
	}
	return sc
}

var snapSuffix = regexp.MustCompile(`-snap[0-9]+$`)

// nextOverlayPath is the first free STEM-snapN.qcow2 next to path.
func nextOverlayPath(path string) (string, error) {
	dir, base := filepath.Split(path)
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	stem = snapSuffix.ReplaceAllString(stem, "")
	for n := 1; n < 100000; n++ {
		p := filepath.Join(dir, fmt.Sprintf("%s-snap%d.qcow2", stem, n))
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no free overlay name for %s", path)
}

// moveDiskOnto creates overlay ov on top of the disk's image base and
// puts it behind the device. The device is paused.
func (vm *VM) moveDiskOnto(i int, base, ov string) error {
	pd := vm.pci.disk(i)
	if err := disk.Overlay(base, ov); err != nil {
		return fmt.Errorf("create overlay %s: %w", ov, err)
	}
	// The base is locked for writing by the open image: release it before
	// the overlay opens it (read-only, shared) as its backing file.
	if err := pd.img.Close(); err != nil {
		os.Remove(ov)
		return fmt.Errorf("close %s: %w", base, err)
	}
	img, err := disk.Open(ov, disk.OpenOptions{})
	if err != nil {
		os.Remove(ov)
		if rerr := vm.reopenDisk(i, vm.cfg.Disks[i]); rerr != nil {
			return fmt.Errorf("open overlay %s: %w (and the disk could not be reopened: %v)", ov, err, rerr)
		}
		return fmt.Errorf("open overlay %s: %w", ov, err)
	}
	return vm.swapDisk(i, img)
}

// moveDiskBack puts the disk's previous image back (undoing moveDiskOnto).
func (vm *VM) moveDiskBack(i int, prev DiskConfig) error {
	pd := vm.pci.disk(i)
	pd.img.Close()
	vm.cfg.Disks[i] = prev
	return vm.reopenDisk(i, prev)
}

// reopenDisk opens d and puts it behind disk i's device.
func (vm *VM) reopenDisk(i int, d DiskConfig) error {
	img, err := disk.Open(d.Path, disk.OpenOptions{Format: d.Format, ReadOnly: d.ReadOnly})
	if err != nil {
		return err
	}
	return vm.swapDisk(i, img)
}

// swapDisk puts img behind disk i's device; the previous image must be
// closed already.
func (vm *VM) swapDisk(i int, img disk.Image) error {
	pd := vm.pci.disk(i)
	if _, err := pd.blk.SwapImage(img); err != nil {
		img.Close()
		return err
	}
	pd.img = img
	pd.closers[0] = img
	return nil
}
