package agentsim

import (
	"crypto/sha256"
	"sync"
	"time"
)

// idemStore remembers successful answers under (method, canonical path,
// Idempotency-Key), as the real server does: in memory only (a restart
// forgets them), for a TTL, and only answers that succeeded (2xx). There
// is no in-flight reservation: two identical requests sent together both
// run, and only a later one replays.
type idemStore struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[idemKey]*idemEntry
	// order holds every entry put in entries, oldest first. expires is
	// save time + ttl, so this is also expiry order, and a sweep only looks
	// at the expired front: O(1) amortised per request.
	order []idemRef
	head  int // order[:head] are swept
}

type idemRef struct {
	k idemKey
	e *idemEntry
}

type idemKey struct{ method, path, key string }

type idemEntry struct {
	bodyHash [32]byte
	expires  time.Time
	status   int
	body     []byte
}

func newIdemStore(ttl time.Duration) *idemStore {
	return &idemStore{ttl: ttl, now: time.Now, entries: make(map[idemKey]*idemEntry)}
}

// idemOutcome is what lookup decided.
type idemOutcome int

const (
	idemProceed  idemOutcome = iota // unknown key: run the handler
	idemReplay                      // answer with entry.status / entry.body
	idemConflict                    // same key, different body
)

// lookup finds k. canon is the request body as the server re-encodes it.
func (st *idemStore) lookup(k idemKey, canon []byte) (idemOutcome, *idemEntry) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	st.sweepLocked(now)
	e := st.entries[k]
	switch {
	case e == nil || now.After(e.expires):
		return idemProceed, nil
	case e.bodyHash != sha256.Sum256(canon):
		return idemConflict, e
	default:
		return idemReplay, e
	}
}

// save stores a successful answer (the latest save of a key wins, as in
// the real store).
func (st *idemStore) save(k idemKey, canon []byte, status int, body []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	st.sweepLocked(now)
	e := &idemEntry{bodyHash: sha256.Sum256(canon), expires: now.Add(st.ttl), status: status, body: body}
	st.entries[k] = e
	st.order = append(st.order, idemRef{k, e})
}

// sweepLocked drops expired entries, walking the time-ordered queue from
// the oldest entry and stopping at the first one not expired.
func (st *idemStore) sweepLocked(now time.Time) {
	for st.head < len(st.order) {
		ref := st.order[st.head]
		if cur := st.entries[ref.k]; cur == ref.e {
			if !now.After(ref.e.expires) {
				break
			}
			delete(st.entries, ref.k)
		}
		// else: replaced by a later save of the same key.
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
