package queue

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The keys bucket, "<prefix>_keys", coordinates jobs that share a key
// across the fleet, in JetStream only:
//
//   - a conversation (a job's session_key) has a SessionLease: the agent
//     session its jobs continue and the one job holding it now, so two runs
//     of one session never overlap (the server would answer 409);
//   - a concurrency_key has a ConcurrencyLease: the jobs holding its slots,
//     at most the policy's limit for the key.
//
// A lease names jobs, never workers: a holder is live while its run record
// says the run is not done (or, before the record exists, while its job
// message is still in JOBS), so a worker that dies leaks nothing: the next
// job waiting for the key finds the holder's run done (or its message gone)
// and takes its place. Every write is a compare-and-set on the key's
// revision. The bucket's TTL (the results retention) drops the leases of
// keys nobody used for that long: a conversation idle for a week starts a
// new session, and hostile keys cannot grow the bucket without bound.

// SessionLease is a conversation's agent session and who holds it.
type SessionLease struct {
	// Profile is the profile of the conversation's first job: a session_key
	// belongs to one profile (its policy, tools and workdir), and a job of
	// another profile with the same key is rejected.
	Profile string `json:"profile"`
	// SessionID is the agent session the conversation's jobs continue; ""
	// until the first job created one.
	SessionID string `json:"session_id,omitempty"`
	// Holder is the job whose run holds the session now (running or
	// paused); "" when the session is free.
	Holder KeyHolder `json:"holder,omitzero"`
	// LastJob is the last job that held the session.
	LastJob string `json:"last_job,omitempty"`
	// RequesterKey is the producer key that signed the conversation's
	// first job ("" for unsigned jobs): only jobs signed by it continue
	// the conversation.
	RequesterKey string `json:"requester_key,omitempty"`
}

// ConcurrencyLease holds the jobs running under one concurrency_key.
type ConcurrencyLease struct {
	Holders []KeyHolder `json:"holders,omitempty"`
}

// KeyHolder is one job holding a key: its id and the stream sequence of
// its job message in JOBS.
type KeyHolder struct {
	Job   string    `json:"job"`
	Seq   uint64    `json:"seq"`
	Since time.Time `json:"since"`
}

// MaxConcurrencyHolders bounds a concurrency lease, whatever the policy
// says, so its record stays small.
const MaxConcurrencyHolders = 256

// KeysBucketConfig is the KV bucket of session and concurrency leases.
func (cfg Config) KeysBucketConfig() jetstream.KeyValueConfig {
	cfg = cfg.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      cfg.KeysBucket(),
		Description: "jetpilot keys: session_key -> the conversation's session and holder; concurrency_key -> the jobs holding its slots",
		History:     1,
		TTL:         cfg.ResultsMaxAge,
		Storage:     cfg.Storage,
		Replicas:    cfg.Replicas,
	}
}

// KeysBucket is "<prefix>_keys" (see KeyStore).
func (cfg Config) KeysBucket() string { return cfg.prefix() + "_keys" }

// EnsureKeysBucket creates the keys bucket when it does not exist, and
// leaves it as it is when it does.
func EnsureKeysBucket(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	kvc := cfg.KeysBucketConfig()
	_, err := js.KeyValue(ctx, kvc.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		_, err = js.CreateKeyValue(ctx, kvc)
	}
	if err != nil {
		return fmt.Errorf("ensure KV bucket %s: %w", kvc.Bucket, err)
	}
	return nil
}

// ErrLeaseConflict: a lease changed since it was read; read it again.
var ErrLeaseConflict = errors.New("lease changed meanwhile")

// KeyStore reads and writes leases in the keys bucket.
type KeyStore struct {
	kv jetstream.KeyValue
}

// NewKeyStore binds to the keys bucket, which Setup and EnsureStreams create.
func NewKeyStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*KeyStore, error) {
	kv, err := js.KeyValue(ctx, cfg.KeysBucket())
	if err != nil {
		return nil, fmt.Errorf("open key store (KV bucket %s; has `jetpilot setup` run?): %w", cfg.KeysBucket(), err)
	}
	return &KeyStore{kv: kv}, nil
}

// SessionLeaseKey and ConcurrencyLeaseKey are the KV keys of a key's
// leases: the key in base64url, since KV keys allow no ':'.
func SessionLeaseKey(sessionKey string) string {
	return "s." + base64.RawURLEncoding.EncodeToString([]byte(sessionKey))
}

// ConcurrencyLeaseKey: see SessionLeaseKey.
func ConcurrencyLeaseKey(concurrencyKey string) string {
	return "c." + base64.RawURLEncoding.EncodeToString([]byte(concurrencyKey))
}

// Session reads a conversation's lease; rev 0 when it has none.
func (s *KeyStore) Session(ctx context.Context, sessionKey string) (SessionLease, uint64, error) {
	var l SessionLease
	rev, err := s.get(ctx, SessionLeaseKey(sessionKey), &l)
	return l, rev, err
}

// PutSession writes a conversation's lease if it is still at rev (0:
// if it has none); ErrLeaseConflict otherwise.
func (s *KeyStore) PutSession(ctx context.Context, sessionKey string, l SessionLease, rev uint64) (uint64, error) {
	return s.put(ctx, SessionLeaseKey(sessionKey), l, rev)
}

// Concurrency reads a concurrency key's lease; rev 0 when it has none.
func (s *KeyStore) Concurrency(ctx context.Context, key string) (ConcurrencyLease, uint64, error) {
	var l ConcurrencyLease
	rev, err := s.get(ctx, ConcurrencyLeaseKey(key), &l)
	return l, rev, err
}

// PutConcurrency writes a concurrency key's lease if it is still at rev;
// ErrLeaseConflict otherwise.
func (s *KeyStore) PutConcurrency(ctx context.Context, key string, l ConcurrencyLease, rev uint64) (uint64, error) {
	if len(l.Holders) > MaxConcurrencyHolders {
		return 0, fmt.Errorf("write lease of concurrency key %s: %d holders is more than %d", key, len(l.Holders), MaxConcurrencyHolders)
	}
	return s.put(ctx, ConcurrencyLeaseKey(key), l, rev)
}

// Changes calls fn with the KV key of every lease written from now on,
// until ctx is done: how a waiting job learns that a holder let go,
// without polling. A watch lost to a reconnect is made again.
func (s *KeyStore) Changes(ctx context.Context, fn func(kvKey string)) {
	for ctx.Err() == nil {
		w, err := s.kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
		if err == nil {
			for e := range w.Updates() {
				if e != nil {
					fn(e.Key())
				}
			}
			_ = w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *KeyStore) get(ctx context.Context, key string, v any) (uint64, error) {
	e, err := s.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read lease %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("read lease %s: decode revision %d: %w", key, e.Revision(), err)
	}
	return e.Revision(), nil
}

func (s *KeyStore) put(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("write lease %s: %w", key, err)
	}
	if rev == 0 {
		rev, err = s.kv.Create(ctx, key, data)
	} else {
		rev, err = s.kv.Update(ctx, key, data, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || IsWrongLastSequence(err) {
		return 0, fmt.Errorf("write lease %s: %w", key, ErrLeaseConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("write lease %s: %w", key, err)
	}
	return rev, nil
}

// Without returns the holders other than job.
func (l ConcurrencyLease) Without(job string) []KeyHolder {
	return slices.DeleteFunc(slices.Clone(l.Holders), func(h KeyHolder) bool { return h.Job == job })
}

// HoldsSeq reports whether the job message at JOBS sequence seq holds one
// of the lease's slots.
func (l ConcurrencyLease) HoldsSeq(seq uint64) bool {
	return slices.ContainsFunc(l.Holders, func(h KeyHolder) bool { return h.Seq == seq })
}

// Holds reports whether job holds one of the lease's slots.
func (l ConcurrencyLease) Holds(job string) bool {
	return slices.ContainsFunc(l.Holders, func(h KeyHolder) bool { return h.Job == job })
}
