package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
)

// PolicyKey is the key of the fleet's policy document in the policy bucket.
// One key, so that a version is one KV revision and every worker watches
// one subject.
const PolicyKey = "policy"

// PolicyHistory is how many versions of the policy the bucket keeps (the
// current one and the 15 before it). Enough to see what changed and to put
// an earlier version back (`jetpilot policy get --version N` and `policy
// set`) after a bad change or at the end of an incident freeze; the audit
// stream, not the bucket, is the long-term record of every change. JetStream
// allows at most 64.
const PolicyHistory = 16

var (
	// ErrNoPolicy: no policy is stored (the key was never written, or was
	// deleted or purged). Workers then use their flags' policy, or the
	// built-in one (policy.FromFlags, policy.Default); it is the only
	// PolicyStore error after which falling back is right.
	ErrNoPolicy = errors.New("no policy is stored")
	// ErrPolicyConflict: the stored policy changed between the moment Set
	// read it and its write (or is not the version IfVersion expects), so
	// Set stored nothing: another admin's version is not overwritten
	// unseen. Look at the stored policy and set again.
	ErrPolicyConflict = errors.New("the stored policy changed")
	// ErrPolicyWatchLost: a PolicyWatcher lost its subscription (the
	// connection closed, or the bucket was deleted), so the policy in force
	// is not known until it is back. A worker must not treat it as "no
	// policy".
	ErrPolicyWatchLost = errors.New("policy watch lost")
)

// StoredPolicyError is a stored document that does not parse: someone
// wrote the KV bucket without `jetpilot policy set`, which validates first.
// A worker that meets one refuses work rather than fall back: falling back
// to a looser policy would let a typo in an incident freeze open the fleet.
type StoredPolicyError struct {
	Bucket  string
	Version uint64
	// Err is policy.Parse's error, a *schemas.ValidationError listing every
	// problem.
	Err error
}

func (e *StoredPolicyError) Error() string {
	return fmt.Sprintf("policy version %d in KV bucket %s is not a valid policy (was it written without `jetpilot policy set`?): %v",
		e.Version, e.Bucket, e.Err)
}

func (e *StoredPolicyError) Unwrap() error { return e.Err }

// PolicyBucketConfig is the KV bucket of the fleet's policy: one key,
// PolicyKey, whose revision is the policy version, with PolicyHistory
// versions kept.
func (cfg Config) PolicyBucketConfig() jetstream.KeyValueConfig {
	cfg = cfg.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      cfg.PolicyBucket(),
		Description: "jetpilot fleet policy: key " + PolicyKey + " -> the document as written (YAML or JSON); its revision is the policy version",
		History:     PolicyHistory,
		Storage:     cfg.Storage,
		Replicas:    cfg.Replicas,
	}
}

// EnsurePolicyBucket creates the policy bucket when it does not exist and
// leaves an existing one as it is: a worker or an admin command may run it
// at any time without putting back defaults over settings `jetpilot setup`
// (or an operator with the nats CLI) gave the bucket. It never touches the
// stored policy.
func EnsurePolicyBucket(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("ensure policy bucket: %w", err)
	}
	kvc := cfg.PolicyBucketConfig()
	_, err := js.KeyValue(ctx, kvc.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		_, err = js.CreateKeyValue(ctx, kvc)
		if errors.Is(err, jetstream.ErrBucketExists) {
			err = nil // created by someone else meanwhile
		}
	}
	if err != nil {
		return fmt.Errorf("ensure KV bucket %s: %w", kvc.Bucket, err)
	}
	return nil
}

// PolicyStore reads, stores and watches the fleet's policy in the
// "<prefix>_policy" bucket. Safe for concurrent use.
type PolicyStore struct {
	kv     jetstream.KeyValue
	conn   *nats.Conn
	bucket string
}

// NewPolicyStore binds to the policy bucket, which Setup, EnsureStreams and
// EnsurePolicyBucket create. A missing bucket is an error that wraps
// jetstream.ErrBucketNotFound.
func NewPolicyStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*PolicyStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open policy store: %w", err)
	}
	kv, err := js.KeyValue(ctx, cfg.PolicyBucket())
	if err != nil {
		return nil, fmt.Errorf("open policy store (KV bucket %s; has `jetpilot setup` run?): %w", cfg.PolicyBucket(), err)
	}
	return &PolicyStore{kv: kv, conn: js.Conn(), bucket: cfg.PolicyBucket()}, nil
}

// Bucket is the name of the store's KV bucket.
func (s *PolicyStore) Bucket() string { return s.bucket }

// StoredPolicy is a policy document as stored: the bytes `policy set` was
// given (YAML stays YAML, comments and all), its version and when it was
// stored.
type StoredPolicy struct {
	Data     []byte
	Version  uint64
	StoredAt time.Time
}

// Stored returns the current document as stored, without parsing it, or
// ErrNoPolicy.
func (s *PolicyStore) Stored(ctx context.Context) (StoredPolicy, error) {
	e, err := s.kv.Get(ctx, PolicyKey)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return StoredPolicy{}, ErrNoPolicy
		}
		return StoredPolicy{}, fmt.Errorf("read policy from KV bucket %s: %w", s.bucket, err)
	}
	return StoredPolicy{Data: e.Value(), Version: e.Revision(), StoredAt: e.Created()}, nil
}

// StoredVersion returns the document stored as version v, while the bucket
// still keeps it (PolicyHistory versions). A version that is not a policy
// (never stored, or a deletion) is an error wrapping ErrNoPolicy.
func (s *PolicyStore) StoredVersion(ctx context.Context, v uint64) (StoredPolicy, error) {
	e, err := s.kv.GetRevision(ctx, PolicyKey, v)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return StoredPolicy{}, fmt.Errorf("policy version %d: %w (the bucket %s keeps the last %d versions)", v, ErrNoPolicy, s.bucket, PolicyHistory)
		}
		return StoredPolicy{}, fmt.Errorf("read policy version %d from KV bucket %s: %w", v, s.bucket, err)
	}
	return StoredPolicy{Data: e.Value(), Version: e.Revision(), StoredAt: e.Created()}, nil
}

// Get returns the current policy, compiled, with Version the KV revision
// and Source policy.SourceStored; ErrNoPolicy when none is stored; a
// *StoredPolicyError when the stored document does not parse.
func (s *PolicyStore) Get(ctx context.Context) (*policy.Policy, error) {
	sp, err := s.Stored(ctx)
	if err != nil {
		return nil, err
	}
	return s.compile(sp.Data, sp.Version)
}

func (s *PolicyStore) compile(data []byte, version uint64) (*policy.Policy, error) {
	p, err := policy.Parse(data)
	if err != nil {
		return nil, &StoredPolicyError{Bucket: s.bucket, Version: version, Err: err}
	}
	p.Version, p.Source = version, policy.SourceStored
	return p, nil
}

// SetResult is what Set stored: the new version, and the version it
// replaced (0: no policy was stored).
type SetResult struct {
	Version  uint64
	Replaced uint64
}

// SetOpt configures Set.
type SetOpt func(*setOpts)

type setOpts struct {
	ifVersion    uint64
	hasIfVersion bool
}

// IfVersion makes Set store only when the current policy is version v (0:
// only when no policy is stored), for an admin who edited what `policy get`
// showed and must not replace a version stored since.
func IfVersion(v uint64) SetOpt {
	return func(o *setOpts) { o.ifVersion, o.hasIfVersion = v, true }
}

// Set validates data (a policy document, YAML or JSON) and stores it as the
// fleet's new policy; every worker applies it within seconds. A document
// that does not parse is refused with policy.Parse's error (a
// *schemas.ValidationError listing every problem) and nothing is stored.
// The bytes are stored as given, so `policy get` shows the document as its
// author wrote it.
//
// The write is a compare-and-set on the revision Set read, so two admins
// storing at once cannot overwrite each other unseen: the later one gets
// ErrPolicyConflict, with the version now stored, and stores nothing. Set
// does not retry; the admin decides whether their document should replace
// the one just stored.
func (s *PolicyStore) Set(ctx context.Context, data []byte, opts ...SetOpt) (SetResult, error) {
	var o setOpts
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := policy.Parse(data); err != nil {
		return SetResult{}, fmt.Errorf("policy not stored: %w", err)
	}
	cur, err := s.Stored(ctx)
	if err != nil && !errors.Is(err, ErrNoPolicy) {
		return SetResult{}, fmt.Errorf("store policy: %w", err)
	}
	if o.hasIfVersion && cur.Version != o.ifVersion {
		return SetResult{}, fmt.Errorf("store policy: %w: %s, not version %d as expected; nothing was stored",
			ErrPolicyConflict, describeVersion(cur.Version), o.ifVersion)
	}
	var rev uint64
	if cur.Version == 0 {
		rev, err = s.kv.Create(ctx, PolicyKey, data)
	} else {
		rev, err = s.kv.Update(ctx, PolicyKey, data, cur.Version)
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			now := "another version is stored now"
			if latest, lerr := s.Stored(ctx); lerr == nil || errors.Is(lerr, ErrNoPolicy) {
				now = describeVersion(latest.Version)
			}
			return SetResult{}, fmt.Errorf("store policy: %w while storing: this command read %s, and %s; nothing was stored",
				ErrPolicyConflict, describeVersion(cur.Version), now)
		}
		return SetResult{}, fmt.Errorf("store policy (%d bytes) in KV bucket %s: %w", len(data), s.bucket, err)
	}
	return SetResult{Version: rev, Replaced: cur.Version}, nil
}

func describeVersion(v uint64) string {
	if v == 0 {
		return "no policy is stored"
	}
	return fmt.Sprintf("version %d is stored", v)
}

// PolicyWatcher delivers the fleet's policy to a function as it changes;
// see PolicyStore.Watch.
type PolicyWatcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Stop ends the watch and waits until its goroutine has returned: fn is not
// called after Stop returns. Do not call it from fn.
func (w *PolicyWatcher) Stop() {
	w.cancel()
	<-w.done
}

// Done is closed when the watch has ended: its context is done, Stop was
// called, or the connection closed for good.
func (w *PolicyWatcher) Done() <-chan struct{} { return w.done }

// Watch delivers the current policy to fn, then every new version, within
// moments of its being stored, until ctx is done or Stop is called. It
// returns once fn has had the current state, so a worker that starts
// taking jobs after Watch returns never decides without a policy.
//
// fn is called from one goroutine, in version order, never concurrently,
// with exactly one of:
//   - a policy (Version the KV revision, Source policy.SourceStored);
//   - ErrNoPolicy: none is stored, or the key was deleted or purged (the
//     worker falls back to its flags' or the built-in policy);
//   - a *StoredPolicyError: the stored document does not parse;
//   - an error wrapping ErrPolicyWatchLost: the watch broke (the bucket was
//     deleted, or the connection closed). It is retried with backoff and
//     the current policy is delivered again once it is back, except after
//     the connection closed, when the watch ends.
//
// Every error but ErrNoPolicy means the policy in force is unknown, and a
// worker must refuse work rather than fall back to anything looser. fn
// should return quickly: updates wait while it runs.
//
// Reconnects need nothing from the caller. The nats.go KV watcher is an
// ordered push consumer with 5s idle heartbeats that outlives a reconnect:
// when it sees a gap, or misses two heartbeat checks (10-20s, as after a
// server restart that lost the ephemeral consumer), it recreates the
// consumer from the next revision. Waiting that long is too slow for an
// incident freeze, so the watch also starts a new KV watcher at every
// reconnect (the connection's CONNECTED status event) and switches to it
// once it is up; the revision it starts at is compared with the last one
// delivered, so nothing is delivered twice and the newest version is never
// skipped.
func (s *PolicyStore) Watch(ctx context.Context, fn func(*policy.Policy, error)) (*PolicyWatcher, error) {
	wctx, cancel := context.WithCancel(ctx)
	kw, stop, err := s.watchKey(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch policy in KV bucket %s: %w", s.bucket, err)
	}
	w := &PolicyWatcher{cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	go w.run(wctx, s, kw, stop, fn, ready)
	select {
	case <-ready:
		return w, nil
	case <-w.done:
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("watch policy in KV bucket %s: %w", s.bucket, err)
		}
		return nil, fmt.Errorf("watch policy in KV bucket %s: %w before the current policy was read", s.bucket, ErrPolicyWatchLost)
	}
}

// run is the watch's goroutine: it turns KV entries into policies, and
// re-creates the KV watcher when it closes while ctx is still live, and
// after every reconnect.
func (w *PolicyWatcher) run(ctx context.Context, s *PolicyStore, kw jetstream.KeyWatcher, stop context.CancelFunc, fn func(*policy.Policy, error), ready chan struct{}) {
	defer close(w.done)
	st := &watchState{fn: fn, ready: ready}
	// A server restart can lose the watcher's ephemeral consumer; nats.go
	// finds out from missed heartbeats, which takes 10-20s. A new watcher
	// right after the reconnect brings any version stored meanwhile at once.
	status := s.conn.StatusChanged(nats.CONNECTED)
	defer s.conn.RemoveStatusListener(status)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 250*time.Millisecond, 10*time.Second
	defer func() {
		if kw != nil {
			stopWatcher(kw, stop)
		}
	}()
	var updates <-chan jetstream.KeyValueEntry = kw.Updates()
	initial := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-status:
			b.Reset()
			retry.Reset(0)
		case <-retry.C:
			nkw, nstop, err := s.watchKey(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if kw == nil && errors.Is(err, nats.ErrConnectionClosed) {
					st.deliver(nil, fmt.Errorf("%w: the NATS connection is closed; the watch of KV bucket %s has ended", ErrPolicyWatchLost, s.bucket))
					return
				}
				retry.Reset(b.NextBackOff())
				continue
			}
			// The old watcher, if any, has delivered what it had; the new
			// one starts at the current revision.
			if kw != nil {
				stopWatcher(kw, stop)
			}
			kw, stop, updates, initial = nkw, nstop, nkw.Updates(), true
			b.Reset()
		case e, open := <-updates:
			if !open {
				if ctx.Err() != nil {
					return
				}
				// The KV watcher closed under us: the policy in force is
				// unknown until a new one has read it.
				stop()
				kw, updates = nil, nil
				st.last, st.lastNone = 0, false
				st.deliver(nil, fmt.Errorf("%w: the watch of KV bucket %s stopped (connection closed, or the bucket deleted); retrying", ErrPolicyWatchLost, s.bucket))
				retry.Reset(b.NextBackOff())
				continue
			}
			if e == nil {
				// The end of the initial values. Nothing came: no policy.
				if initial && st.last == 0 && !st.lastNone {
					st.lastNone = true
					st.deliver(nil, ErrNoPolicy)
				}
				initial = false
				continue
			}
			st.entry(s, e)
		}
	}
}

// watchState is what a watch has delivered.
type watchState struct {
	fn    func(*policy.Policy, error)
	ready chan struct{}
	sent  bool // ready is closed
	// last is the revision of the state fn last had (0: none yet, or the
	// watch was lost since), so that a new KV watcher does not deliver it
	// again; lastNone tells "no policy" apart from revision 0.
	last     uint64
	lastNone bool
}

func (st *watchState) deliver(p *policy.Policy, err error) {
	st.fn(p, err)
	if !st.sent {
		st.sent = true
		close(st.ready)
	}
}

func (st *watchState) entry(s *PolicyStore, e jetstream.KeyValueEntry) {
	if e.Revision() <= st.last {
		return // delivered already, by the watcher before this one
	}
	st.last = e.Revision()
	if op := e.Operation(); op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge {
		st.lastNone = true
		st.deliver(nil, ErrNoPolicy)
		return
	}
	st.lastNone = false
	st.deliver(s.compile(e.Value(), e.Revision()))
}

// watchKey starts a KV watcher of the policy key, with a context of its
// own: nats.go keeps a goroutine per watcher until that context is done.
func (s *PolicyStore) watchKey(ctx context.Context) (jetstream.KeyWatcher, context.CancelFunc, error) {
	kctx, cancel := context.WithCancel(ctx)
	kw, err := s.kv.Watch(kctx, PolicyKey)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return kw, cancel, nil
}

// stopWatcher stops a KV watcher and drains it, so that nats.go's delivery
// goroutine, which blocks on a full channel, can end.
func stopWatcher(kw jetstream.KeyWatcher, cancel context.CancelFunc) {
	_ = kw.Stop()
	cancel()
	for range kw.Updates() {
	}
}
