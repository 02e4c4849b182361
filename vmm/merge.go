package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/godwit-vm/godwit/memory"
)

// MergeSnapshot flattens the diff snapshot src and its chain of parents
// into a full snapshot at out (godwit snapshot merge): the same machine,
// device and disk state as src, with all of guest memory in one file. A
// full src is copied. out must not exist or be empty; on failure nothing
// is left there.
func MergeSnapshot(src, out string) (err error) {
	dir, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	f, sc, mst, _, err := readSnapshot(dir)
	if err != nil {
		return fmt.Errorf("merge %s: %w", src, err)
	}
	rs := &restoring{dir: dir, mst: *mst}
	if err := rs.loadChain(); err != nil {
		return fmt.Errorf("merge %s: %w", src, err)
	}
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return fmt.Errorf("merge: directory %s is not empty", out)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("merge: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	defer func() {
		if err != nil {
			for _, n := range []string{StateFile, MemoryFile, ConfigFile, StateFile + ".tmp", ConfigFile + ".tmp"} {
				os.Remove(filepath.Join(out, n))
			}
			os.Remove(out)
		}
	}()
	var layers []memory.Layer
	for _, l := range rs.chain[1:] {
		set, err := rs.pageSet(l.mst)
		if err != nil {
			return fmt.Errorf("merge: %w", err)
		}
		layers = append(layers, memory.Layer{Path: filepath.Join(l.dir, MemoryFile), Regions: ramRegions(mst.Size), Pages: set})
	}
	if err := memory.MergeFiles(filepath.Join(out, MemoryFile), filepath.Join(rs.chain[0].dir, MemoryFile), mst.Size, layers); err != nil {
		return fmt.Errorf("merge: memory: %w", err)
	}
	f.Remove(secMemory)
	if err := f.AddValue(secMemory, verMemory, memoryState{Size: mst.Size}); err != nil {
		return err
	}
	sc.Type = SnapshotFull
	cj, err := json.MarshalIndent(sc, "", "  ")
	if err != nil {
		return err
	}
	f.Remove(secConfig)
	if err := f.Add(secConfig, verConfig, cj); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(out, ConfigFile), append(cj, '\n')); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	if err := writeFileSync(filepath.Join(out, StateFile+".tmp"), f.Encode()); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	if err := os.Rename(filepath.Join(out, StateFile+".tmp"), filepath.Join(out, StateFile)); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	syncDir(out)
	return nil
}
