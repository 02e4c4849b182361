package daemon

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func eventNames(t *testing.T, s *store, name string) string {
	t.Helper()
	evs, err := s.events(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.Event)
	}
	return strings.Join(out, " ")
}

// TestStoreEventLater: events written later keep their place among the
// others, whether the flusher, the next transaction, a read of the
// history or close writes them; those of a VM deleted meanwhile are
// dropped.
func TestStoreEventLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "godwitd.db")
	s, err := openStore(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev := func(kind string) Event { return Event{Time: time.Now(), Event: kind} }
	if _, err := s.create(Definition{Name: "a"}, ev("created")); err != nil {
		t.Fatal(err)
	}
	s.eventLater("a", ev("e1"))
	if err := s.event("a", ev("e2")); err != nil {
		t.Fatal(err)
	}
	s.eventLater("a", ev("e3"))
	s.eventLater("a", ev("e4"))
	// A failed transaction keeps the waiting events for the next one.
	if _, err := s.create(Definition{Name: "a"}, ev("created")); err != errExists {
		t.Fatalf("create again: %v", err)
	}
	if err := s.setRuntime("a", &runtimeRecord{PID: 1}, ev("e5"), ev("e6")); err != nil {
		t.Fatal(err)
	}
	if got, want := eventNames(t, s, "a"), "created e1 e2 e3 e4 e5 e6"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	s.eventLater("a", ev("e7"))
	if got, want := eventNames(t, s, "a"), "created e1 e2 e3 e4 e5 e6 e7"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	// The flusher writes them by itself.
	s.eventLater("a", ev("e8"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.pending)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flusher did not write the event")
		}
		time.Sleep(time.Millisecond)
	}
	// A deleted VM's waiting events are dropped.
	if _, err := s.create(Definition{Name: "b"}, ev("created")); err != nil {
		t.Fatal(err)
	}
	s.eventLater("b", ev("x"))
	if err := s.remove("b"); err != nil {
		t.Fatal(err)
	}
	s.eventLater("b", ev("y"))
	s.eventLater("a", ev("e9"))
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if s, err = openStore(path, nil); err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if got, want := eventNames(t, s, "a"), "created e1 e2 e3 e4 e5 e6 e7 e8 e9"; got != want {
		t.Errorf("after a reopen: events %q, want %q", got, want)
	}
	if got := eventNames(t, s, "b"); got != "" {
		t.Errorf("deleted b has events %q", got)
	}
}
