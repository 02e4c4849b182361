package virtio

import (
	"sync"
	"sync/atomic"
)

// Worker runs a function on its own goroutine each time an eventfd is
// signalled (and once at start, for work queued while it was stopped).
// Stop returns after the function's current run, so everything it had
// taken from its queues is complete: that is how devices drain on pause.
type Worker struct {
	kick *EventFD
	stop atomic.Bool
	done chan struct{}
}

// StartWorker starts fn on kick.
func StartWorker(kick *EventFD, fn func()) *Worker {
	w := &Worker{kick: kick, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for !w.stop.Load() {
			fn()
			if err := kick.Wait(); err != nil {
				return
			}
		}
	}()
	return w
}

// Stop stops the worker and waits for it. It is safe on a nil Worker.
func (w *Worker) Stop() {
	if w == nil {
		return
	}
	w.stop.Store(true)
	_ = w.kick.Signal()
	<-w.done
}

// Serve processes every chain available on q with handle, which returns
// the bytes it wrote into the chain's writable buffers, and signals the
// driver when it asks for it. It re-enables notifications before
// returning and loops while buffers keep arriving. A broken chain or ring
// is reported through env.NeedsReset and makes Serve return false: the
// device must stop using its queues.
func Serve(q *Queue, c *Chain, env *Env, handle func(*Chain) uint32) bool {
	ok := true
	pushed := false
	for ok {
		for {
			got, err := q.Pop(c)
			if err != nil {
				env.NeedsReset(err)
				ok = false
				break
			}
			if !got {
				break
			}
			q.Push(c, handle(c))
			pushed = true
		}
		if !ok || !q.EnableNotify() {
			break
		}
	}
	if pushed && q.NeedsInterrupt() {
		_ = env.Interrupt.Queue(q.Index())
	}
	return ok
}

// Lifecycle holds the activation state common to simple devices: the
// environment and one worker per queue, with Pause/Resume/Reset.
type Lifecycle struct {
	mu      sync.Mutex
	env     *Env
	workers []*Worker
	paused  bool
	start   func(env *Env, i int) func()
}

// Activate records env and starts a worker per enabled queue; run(env, i)
// returns the function serving queue i. With env.Paused the device is
// active but paused: the workers start on Resume.
func (l *Lifecycle) Activate(env Env, run func(env *Env, i int) func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.env = &env
	l.start = run
	l.paused = env.Paused
	if !l.paused {
		l.startLocked()
	}
}

// Paused reports whether the device is active and paused.
func (l *Lifecycle) Paused() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.env != nil && l.paused
}

func (l *Lifecycle) startLocked() {
	l.workers = make([]*Worker, len(l.env.Queues))
	for i, q := range l.env.Queues {
		if q != nil {
			l.workers[i] = StartWorker(l.env.Kicks[i], l.start(l.env, i))
		}
	}
}

func (l *Lifecycle) stopLocked() {
	for _, w := range l.workers {
		w.Stop()
	}
	l.workers = nil
}

// Env returns the active environment or nil.
func (l *Lifecycle) Env() *Env {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.env
}

// Reset stops the workers and forgets the environment.
func (l *Lifecycle) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopLocked()
	l.env = nil
	l.paused = false
}

// Pause stops the workers after their current requests.
func (l *Lifecycle) Pause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.env == nil || l.paused {
		return
	}
	l.stopLocked()
	l.paused = true
}

// Resume restarts the workers of a paused device.
func (l *Lifecycle) Resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.env == nil || !l.paused {
		return
	}
	l.paused = false
	l.startLocked()
}
