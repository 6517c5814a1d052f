package worker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// heartbeats tells JetStream that held messages are still being worked on
// (InProgress), so a run longer than AckWait is not redelivered while its
// worker lives, yet a dead worker's job comes back within AckWait. One
// ticker serves every held message: a goroutine and a timer per job would
// cost more than the job itself on the fast path, and memory per run when
// thousands are in flight.
type heartbeats struct {
	every time.Duration
	mu    sync.Mutex
	held  map[jetstream.Msg]*slog.Logger
}

func newHeartbeats(every time.Duration) *heartbeats {
	return &heartbeats{every: every, held: map[jetstream.Msg]*slog.Logger{}}
}

// hold keeps msg alive until the returned release is called.
func (h *heartbeats) hold(msg jetstream.Msg, log *slog.Logger) (release func()) {
	h.mu.Lock()
	h.held[msg] = log
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.held, msg)
		h.mu.Unlock()
	}
}

// run beats every held message once per interval until ctx is done. A
// message is first beaten at most one interval after it is held, which
// withDefaults keeps well inside AckWait.
func (h *heartbeats) run(ctx context.Context) {
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		msgs := make(map[jetstream.Msg]*slog.Logger, len(h.held))
		for m, l := range h.held {
			msgs[m] = l
		}
		h.mu.Unlock()
		for m, log := range msgs {
			// Fire and forget: one lost beat is covered by the next.
			if err := m.InProgress(); err != nil && !strings.Contains(err.Error(), "already acknowledged") {
				log.Warn("job heartbeat", "err", err)
			}
		}
	}
}
