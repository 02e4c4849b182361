package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
)

// metaTable is one cached metadata cluster (an L2 table or a refcount block).
// Its buffer is only modified while the image's mu is held exclusively.
type metaTable struct {
	off   int64
	buf   []byte
	dirty bool   // guarded by the image's mu (exclusive)
	used  uint64 // guarded by metaCache.mu
}

// metaCache caches metadata clusters by host offset. Shared holders of the
// image's mu may load tables and evict clean ones; dirty tables are only
// written back by exclusive holders (see Qcow2.writeBack), which keeps the
// on-disk ordering rules in one place.
type metaCache struct {
	f           *os.File
	clusterSize int64
	max         int

	mu     sync.Mutex
	tables map[int64]*metaTable // guarded by mu
	tick   uint64               // guarded by mu
}

func newMetaCache(f *os.File, clusterSize int64, max int) *metaCache {
	return &metaCache{f: f, clusterSize: clusterSize, max: max, tables: make(map[int64]*metaTable)}
}

// get returns the table at off, reading it on a miss.
func (c *metaCache) get(off int64) (*metaTable, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	if t, ok := c.tables[off]; ok {
		t.used = c.tick
		return t, nil
	}
	buf := make([]byte, c.clusterSize)
	if _, err := c.f.ReadAt(buf, off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: metadata cluster at %#x is past the end of the file", ErrCorrupt, off)
		}
		return nil, err
	}
	t := &metaTable{off: off, buf: buf, used: c.tick}
	c.evictCleanLocked()
	c.tables[off] = t
	return t, nil
}

// put inserts a freshly built table (already marked dirty by the caller).
func (c *metaCache) put(t *metaTable) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	t.used = c.tick
	c.evictCleanLocked()
	c.tables[t.off] = t
}

// drop forgets the table at off (after it was freed).
func (c *metaCache) drop(off int64) {
	c.mu.Lock()
	delete(c.tables, off)
	c.mu.Unlock()
}

// evictCleanLocked makes room for one table by dropping the least recently
// used clean table. When every table is dirty the cache grows past max
// until the next write-back.
func (c *metaCache) evictCleanLocked() {
	if len(c.tables) < c.max {
		return
	}
	var victim *metaTable
	for _, t := range c.tables {
		if !t.dirty && (victim == nil || t.used < victim.used) {
			victim = t
		}
	}
	if victim != nil {
		delete(c.tables, victim.off)
	}
}

// dirtyTables returns the dirty tables sorted by offset. The caller holds
// the image's mu exclusively.
func (c *metaCache) dirtyTables() []*metaTable {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d []*metaTable
	for _, t := range c.tables {
		if t.dirty {
			d = append(d, t)
		}
	}
	sort.Slice(d, func(i, j int) bool { return d[i].off < d[j].off })
	return d
}

// overfull reports whether dirty tables have pushed the cache past its size.
func (c *metaCache) overfull() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tables) > c.max
}

// writeDirty writes every dirty table and marks it clean.
func (c *metaCache) writeDirty() error {
	for _, t := range c.dirtyTables() {
		if _, err := c.f.WriteAt(t.buf, t.off); err != nil {
			return fmt.Errorf("write metadata at %#x: %w", t.off, err)
		}
		t.dirty = false
	}
	return nil
}

// reset drops every table (after the tables were rewritten wholesale).
func (c *metaCache) reset() {
	c.mu.Lock()
	c.tables = make(map[int64]*metaTable)
	c.mu.Unlock()
}
