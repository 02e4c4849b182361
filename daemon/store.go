package daemon

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The store is one bbolt file, STATE_DIR/godwitd.db. Every change is one
// transaction, synced before it returns, so a daemon killed at any moment
// loses no definition it acknowledged.
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

type store struct{ db *bolt.DB }

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

func openStore(path string) (*store, error) {
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
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// create stores a new VM; errExists if the name is taken.
func (s *store) create(def Definition, ev Event) (vmRecord, error) {
	var rec vmRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
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
	return s.db.Update(func(tx *bolt.Tx) error {
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
// an event, in one transaction. A VM deleted meanwhile is left alone.
func (s *store) setRuntime(name string, rt *runtimeRecord, ev *Event) error {
	return s.db.Update(func(tx *bolt.Tx) error {
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
		if ev != nil {
			return putEvent(tx, name, *ev)
		}
		return nil
	})
}

// event appends ev to name's history.
func (s *store) event(name string, ev Event) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketVMs).Get([]byte(name)) == nil {
			return nil
		}
		return putEvent(tx, name, ev)
	})
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

// events returns name's history, oldest first.
func (s *store) events(name string) ([]Event, error) {
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
