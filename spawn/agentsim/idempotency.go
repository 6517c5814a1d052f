package agentsim

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"
)

// idemStore remembers the first answer to each (Idempotency-Key, path) so a
// retried request replays it instead of acting twice. Like the real server it
// is in memory only, and keys expire after a TTL.
type idemStore struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[idemKey]*idemEntry
	// order holds every entry put in entries, oldest first. expires is
	// claim time + ttl, so this is also expiry order, and a sweep only looks
	// at the expired front: O(1) amortised per request instead of a scan
	// of every key.
	order []idemRef
	head  int // order[:head] are swept
}

type idemRef struct {
	k idemKey
	e *idemEntry
}

type idemKey struct{ key, path string }

type idemEntry struct {
	bodyHash [32]byte
	expires  time.Time
	done     chan struct{} // closed when the first request has answered
	stored   bool          // status/body valid (set before done closes)
	status   int
	body     []byte
}

func newIdemStore(ttl time.Duration) *idemStore {
	return &idemStore{ttl: ttl, now: time.Now, entries: make(map[idemKey]*idemEntry)}
}

// idemOutcome is what begin decided.
type idemOutcome int

const (
	idemProceed  idemOutcome = iota // first use: run the handler, then finish
	idemReplay                      // answer with entry.status / entry.body
	idemConflict                    // same key, different body
)

// maxIdemWaits bounds how often begin re-checks a key whose first request
// failed with an answer that is not remembered.
const maxIdemWaits = 8

// begin looks up key for path. When it returns idemProceed, the caller must
// call finish with the entry. A concurrent request with the same key waits
// for the first one to answer, then replays it.
func (st *idemStore) begin(ctx context.Context, key, path string, body []byte) (idemOutcome, *idemEntry, error) {
	h := sha256.Sum256(body)
	k := idemKey{key: key, path: path}
	for range maxIdemWaits {
		st.mu.Lock()
		now := st.now()
		st.sweepLocked(now)
		e := st.entries[k]
		if e != nil && expiredLocked(e, now) {
			// Expired but still queued behind an entry whose first request
			// has not answered yet: expire it now.
			delete(st.entries, k)
			e = nil
		}
		if e == nil {
			e = &idemEntry{bodyHash: h, expires: now.Add(st.ttl), done: make(chan struct{})}
			st.entries[k] = e
			st.order = append(st.order, idemRef{k, e})
			st.mu.Unlock()
			return idemProceed, e, nil
		}
		st.mu.Unlock()
		if e.bodyHash != h {
			return idemConflict, e, nil
		}
		select {
		case <-e.done:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
		if e.stored {
			return idemReplay, e, nil
		}
		// The first request's answer was not remembered (a 5xx or 429):
		// this retry may act. Loop to claim the key.
	}
	return idemProceed, &idemEntry{done: make(chan struct{})}, nil
}

// finish records the answer of the request that claimed e. Answers a client
// should retry (5xx, 429) are forgotten so the retry can act.
func (st *idemStore) finish(key, path string, e *idemEntry, status int, body []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if status < 500 && status != 429 {
		e.status, e.body, e.stored = status, body, true
	} else if st.entries[idemKey{key, path}] == e {
		delete(st.entries, idemKey{key, path})
	}
	close(e.done)
}

// expiredLocked reports whether e is past its TTL and its first request has
// answered (an entry still in flight is never dropped).
func expiredLocked(e *idemEntry, now time.Time) bool {
	if !now.After(e.expires) {
		return false
	}
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// sweepLocked drops expired entries whose first request has answered. It
// walks the time-ordered queue from the oldest entry and stops at the first
// one not expired, or still waiting for its first answer (it is dropped by a
// later sweep; begin checks the expiry of the key it looks up itself).
func (st *idemStore) sweepLocked(now time.Time) {
	for st.head < len(st.order) {
		ref := st.order[st.head]
		if cur := st.entries[ref.k]; cur == ref.e {
			if !expiredLocked(ref.e, now) {
				break
			}
			delete(st.entries, ref.k)
		}
		// else: forgotten (a 5xx answer) or expired by begin and replaced.
		st.order[st.head] = idemRef{}
		st.head++
	}
	if st.head == len(st.order) {
		st.order, st.head = st.order[:0], 0
	} else if st.head > 1024 && st.head > len(st.order)/2 {
		n := copy(st.order, st.order[st.head:])
		clear(st.order[n:])
		st.order, st.head = st.order[:n], 0
	}
}
