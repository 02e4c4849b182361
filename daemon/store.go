package daemon

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The store is one bbolt file, STATE_DIR/godwitd.db. Every change is one
// transaction, synced before it returns, so a daemon killed at any moment
// loses no definition it acknowledged. The one exception is eventLater:
// an event of history that need not hold up its caller (a start's
// "running") waits in memory and is written by the next transaction, or
// by one of its own flushDelay later, so a daemon killed in the few
// milliseconds before that loses it (and nothing else: the runtime record
// a start writes is synced before the start answers).
// Events keep their order either way: every transaction writes the
// waiting events first, one transaction at a time (store.wmu).
//
//	vms/NAME        vmRecord (JSON)
//	runtime/NAME    runtimeRecord (JSON): the VM process that runs it
//	events/NAME/SEQ Event (JSON), SEQ a big-endian uint64
var (
	bucketVMs     = []byte("vms")
	bucketRuntime = []byte("runtime")
	bucketEvents  = []byte("events")
)

// maxEvents is how many events a VM keeps; older ones are dropped.
const maxEvents = 1000

type store struct {
	db  *bolt.DB
	log *slog.Logger

	// wmu is held across every write transaction, so that the events
	// each takes from pending are written in the order they came.
	wmu sync.Mutex

	mu      sync.Mutex // guards pending
	pending []namedEvent
	kick    chan struct{} // wakes the flusher
	stop    chan struct{} // closed by close
	flushed chan struct{} // closed when the flusher has ended
}

// flushDelay is how long an event written later (eventLater) waits for a
// transaction to go with, before the flusher writes it in one of its own:
// a start's "running" event usually goes with the next change (a client
// that starts a VM often does something with it next), and its fsync
// does not compete with the start's answer.
const flushDelay = 5 * time.Millisecond

// namedEvent is an event waiting to be written (store.eventLater).
type namedEvent struct {
	name string
	ev   Event
}

// vmRecord is a VM's stored definition.
type vmRecord struct {
	ID      uint64     `json:"id"`
	Created time.Time  `json:"created"`
	Def     Definition `json:"definition"`
}

// runtimeRecord is what a new daemon needs to re-attach to a VM process.
type runtimeRecord struct {
	PID int `json:"pid"`
	// StartTicks is the process's start time (field 22 of
	// /proc/PID/stat), so that a recycled pid is not mistaken for it.
	StartTicks    string    `json:"start_ticks"`
	APISocket     string    `json:"api_socket"`
	ConsoleSocket string    `json:"console_socket"`
	ExitFile      string    `json:"exit_file"`
	StartedAt     time.Time `json:"started_at"`
	RestoredFrom  string    `json:"restored_from,omitempty"`
	Cgroup        string    `json:"cgroup,omitempty"`
}

var errExists = errors.New("exists")

func openStore(path string, log *slog.Logger) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("state %s is locked: another godwitd is using this state directory", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketVMs, bucketRuntime, bucketEvents} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	s := &store{db: db, log: log, kick: make(chan struct{}, 1), stop: make(chan struct{}), flushed: make(chan struct{})}
	go s.flusher()
	return s, nil
}

// close writes the events still waiting and closes the file.
func (s *store) close() error {
	close(s.stop)
	<-s.flushed
	return s.db.Close()
}

// update runs fn in a write transaction, after writing the events that
// wait (in the same transaction). If fn fails, the waiting events go
// back to the head of the queue for the next transaction.
func (s *store) update(fn func(tx *bolt.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.updateLocked(fn)
}

// updateLocked is update with wmu held.
func (s *store) updateLocked(fn func(tx *bolt.Tx) error) error {
	s.mu.Lock()
	evs := s.pending
	s.pending = nil
	s.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, ne := range evs {
			if err := putEventIfExists(tx, ne.name, ne.ev); err != nil {
				return err
			}
		}
		return fn(tx)
	})
	if err != nil && len(evs) > 0 {
		s.mu.Lock()
		s.pending = append(evs, s.pending...)
		s.mu.Unlock()
		s.wake()
	}
	return err
}

// eventLater appends ev to name's history without waiting for it to be
// written (see the top of this file).
func (s *store) eventLater(name string, ev Event) {
	s.mu.Lock()
	s.pending = append(s.pending, namedEvent{name, ev})
	s.mu.Unlock()
	s.wake()
}

func (s *store) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// flusher writes the waiting events flushDelay after they came (unless
// a transaction took them meanwhile), and the last ones at close.
func (s *store) flusher() {
	defer close(s.flushed)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			s.flushOrDrop()
			return
		}
		select {
		case <-time.After(flushDelay):
		case <-s.stop:
			s.flushOrDrop()
			return
		}
		s.flushOrDrop()
	}
}

// flushOrDrop is flush; the events it could not write are dropped: a
// store that cannot be written fails the next synchronous change too,
// which says so.
func (s *store) flushOrDrop() {
	if err := s.flush(); err != nil {
		s.mu.Lock()
		n := len(s.pending)
		s.pending = nil
		s.mu.Unlock()
		if s.log != nil {
			s.log.Error("store: events lost", "events", n, "err", err)
		}
	}
}

// flush writes the waiting events now, if any. Once it returns, those
// that waited when it was called are written (by it or by a transaction
// in progress).
func (s *store) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	n := len(s.pending)
	s.mu.Unlock()
	if n == 0 {
		return nil
	}
	return s.updateLocked(func(*bolt.Tx) error { return nil })
}

// create stores a new VM; errExists if the name is taken.
func (s *store) create(def Definition, ev Event) (vmRecord, error) {
	var rec vmRecord
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		if b.Get([]byte(def.Name)) != nil {
			return errExists
		}
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec = vmRecord{ID: id, Created: ev.Time, Def: def}
		v, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(def.Name), v); err != nil {
			return err
		}
		// A VM of the same name deleted before left nothing; clear
		// anything that might remain all the same.
		tx.Bucket(bucketRuntime).Delete([]byte(def.Name))
		evs := tx.Bucket(bucketEvents)
		if evs.Bucket([]byte(def.Name)) != nil {
			if err := evs.DeleteBucket([]byte(def.Name)); err != nil {
				return err
			}
		}
		return putEvent(tx, def.Name, ev)
	})
	return rec, err
}

// remove deletes a VM with its runtime record and events.
func (s *store) remove(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketVMs).Delete([]byte(name)); err != nil {
			return err
		}
		tx.Bucket(bucketRuntime).Delete([]byte(name))
		evs := tx.Bucket(bucketEvents)
		if evs.Bucket([]byte(name)) != nil {
			return evs.DeleteBucket([]byte(name))
		}
		return nil
	})
}

// all returns every stored VM and its runtime record, if any.
func (s *store) all() (map[string]vmRecord, map[string]runtimeRecord, error) {
	vms := map[string]vmRecord{}
	rts := map[string]runtimeRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var r vmRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("VM %q: %w", k, err)
			}
			vms[string(k)] = r
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketRuntime).ForEach(func(k, v []byte) error {
			var r runtimeRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("runtime of %q: %w", k, err)
			}
			rts[string(k)] = r
			return nil
		})
	})
	return vms, rts, err
}

// setRuntime records (rt not nil) or clears the VM process of name, with
// its events, in one transaction. A VM deleted meanwhile is left alone.
func (s *store) setRuntime(name string, rt *runtimeRecord, evs ...Event) error {
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketVMs).Get([]byte(name)) == nil {
			return nil
		}
		b := tx.Bucket(bucketRuntime)
		if rt == nil {
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
		} else {
			v, err := json.Marshal(rt)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), v); err != nil {
				return err
			}
		}
		for _, ev := range evs {
			if err := putEvent(tx, name, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// event appends evs to name's history.
func (s *store) event(name string, evs ...Event) error {
	return s.update(func(tx *bolt.Tx) error {
		for _, ev := range evs {
			if err := putEventIfExists(tx, name, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// putEventIfExists appends ev to name's history unless no VM has that
// name (deleted meanwhile).
func putEventIfExists(tx *bolt.Tx, name string, ev Event) error {
	if tx.Bucket(bucketVMs).Get([]byte(name)) == nil {
		return nil
	}
	return putEvent(tx, name, ev)
}

func putEvent(tx *bolt.Tx, name string, ev Event) error {
	b, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return err
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	if err := b.Put(k[:], v); err != nil {
		return err
	}
	if seq > maxEvents {
		binary.BigEndian.PutUint64(k[:], seq-maxEvents)
		b.Delete(k[:])
	}
	return nil
}

// events returns name's history, oldest first, with the events that
// wait (written first).
func (s *store) events(name string) ([]Event, error) {
	if err := s.flush(); err != nil {
		return nil, err
	}
	evs := []Event{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte(name))
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			evs = append(evs, e)
			return nil
		})
	})
	return evs, err
}
