package worker

import "sync"

// handlers runs the answers to core NATS requests (cancel, steer) in
// goroutines of their own, so a slow answer does not hold the
// subscription's, and lets a stopping worker wait for them: after Close no
// handler starts, and Close returns when the running ones have.
type handlers struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
	slots  chan struct{} // nil: unbounded
}

// newHandlers bounds the handlers running at once to limit (0: no bound).
func newHandlers(limit int) *handlers {
	h := &handlers{}
	if limit > 0 {
		h.slots = make(chan struct{}, limit)
	}
	return h
}

// Go runs f unless Close was called or limit handlers run already; it
// reports whether f runs.
func (h *handlers) Go(f func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	if h.slots != nil {
		select {
		case h.slots <- struct{}{}:
		default:
			return false
		}
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		if h.slots != nil {
			defer func() { <-h.slots }()
		}
		f()
	}()
	return true
}

// Close stops new handlers and waits for the running ones.
func (h *handlers) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.wg.Wait()
}
