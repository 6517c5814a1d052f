package queue_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

const policyYAML = `# the fleet's policy
version: 1
tools:
  default: approve
  rules:
    - {name: read-only, match: {tools: [view]}, action: allow}
`

const policyJSON = `{"version": 1, "tools": {"default": "deny", "rules": [{"name": "ls", "match": {"tools": ["run_command"], "args": {"command": "ls( -l)?"}}, "action": "allow"}]}}`

func newPolicyStore(t *testing.T) (env, *queue.PolicyStore) {
	t.Helper()
	e := setupEnv(t, queue.Config{})
	ps, err := queue.NewPolicyStore(e.ctx, e.js, e.cfg)
	require.NoError(t, err)
	return e, ps
}

func TestPolicyBucket(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	kv, err := e.js.KeyValue(e.ctx, "jetpilot_policy")
	require.NoError(t, err, "Setup creates the policy bucket")
	st, err := kv.Status(e.ctx)
	require.NoError(t, err)
	assert.EqualValues(t, queue.PolicyHistory, st.History())
	assert.Equal(t, "jetpilot_policy", queue.Config{}.PolicyBucket())
	assert.Equal(t, "acme_policy", queue.Config{Prefix: "acme"}.PolicyBucket())

	// EnsureStreams creates it too, and EnsurePolicyBucket never changes
	// a bucket that exists.
	_, _, js := testnats.Start(t)
	ctx := testCtx(t)
	_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "acme_policy", History: 3})
	require.NoError(t, err)
	require.NoError(t, queue.EnsurePolicyBucket(ctx, js, queue.Config{Prefix: "acme"}))
	kv, err = js.KeyValue(ctx, "acme_policy")
	require.NoError(t, err)
	st, err = kv.Status(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 3, st.History(), "an existing bucket is left as it is")
	require.NoError(t, queue.EnsureStreams(ctx, js, queue.Config{}))
	_, err = js.KeyValue(ctx, "jetpilot_policy")
	require.NoError(t, err, "EnsureStreams creates the policy bucket")

	_, err = queue.NewPolicyStore(ctx, js, queue.Config{Prefix: "none"})
	require.ErrorIs(t, err, jetstream.ErrBucketNotFound)
}

func TestPolicySetGet(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)

	_, err := ps.Get(e.ctx)
	require.ErrorIs(t, err, queue.ErrNoPolicy)
	_, err = ps.Stored(e.ctx)
	require.ErrorIs(t, err, queue.ErrNoPolicy)

	res, err := ps.Set(e.ctx, []byte(policyYAML))
	require.NoError(t, err)
	assert.Equal(t, uint64(0), res.Replaced, "nothing was stored before")
	v1 := res.Version
	assert.Positive(t, v1)

	p, err := ps.Get(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, v1, p.Version)
	assert.Equal(t, policy.SourceStored, p.Source)
	assert.Equal(t, policy.Approve, p.Document().Tools.Default)
	assert.Equal(t, policy.Allow, p.Evaluate(policy.Call{Name: "view"}).Action)
	assert.Equal(t, v1, p.Evaluate(policy.Call{Name: "view"}).Version, "verdicts carry the version")
	sp, err := ps.Stored(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, policyYAML, string(sp.Data), "YAML is stored as written, comments and all")
	assert.Equal(t, v1, sp.Version)
	assert.WithinDuration(t, time.Now(), sp.StoredAt, time.Minute)

	res, err = ps.Set(e.ctx, []byte(policyJSON))
	require.NoError(t, err)
	assert.Equal(t, v1, res.Replaced)
	v2 := res.Version
	assert.Greater(t, v2, v1)
	p, err = ps.Get(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, v2, p.Version)
	assert.Equal(t, policy.Deny, p.Document().Tools.Default)
	sp, err = ps.Stored(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, policyJSON, string(sp.Data))

	// An earlier version is still there to be looked at (and put back).
	old, err := ps.StoredVersion(e.ctx, v1)
	require.NoError(t, err)
	assert.Equal(t, policyYAML, string(old.Data))
	_, err = ps.StoredVersion(e.ctx, v2+10)
	require.ErrorIs(t, err, queue.ErrNoPolicy)
}

func TestPolicySetRefusesMalformed(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)
	good, err := ps.Set(e.ctx, []byte(policyYAML))
	require.NoError(t, err)

	bad := `version: 1
tools:
  default: maybe
  rules:
    - {name: r, match: {tools: [run_command], args: {command: 'ls ('}}, action: allow}
jobs: {max_timeout: soon}
`
	_, err = ps.Set(e.ctx, []byte(bad))
	require.Error(t, err)
	var ve *schemas.ValidationError
	require.ErrorAs(t, err, &ve, "every problem, field by field")
	assert.Equal(t, "invalid_policy", ve.Code)
	assert.Contains(t, err.Error(), "policy not stored")
	assert.Contains(t, err.Error(), "tools/default")

	// The schema catches the default; fix it and Compile's checks speak.
	bad2 := `version: 1
tools:
  default: approve
  rules:
    - {name: r, match: {tools: [run_command], args: {command: 'ls ('}}, action: allow}
jobs: {max_timeout: soon}
`
	_, err = ps.Set(e.ctx, []byte(bad2))
	require.ErrorAs(t, err, &ve)
	var fields []string
	for _, p := range ve.Problems {
		fields = append(fields, p.Field)
	}
	assert.ElementsMatch(t, []string{"tools/rules/0/match/args/command", "jobs/max_timeout"}, fields)

	_, err = ps.Set(e.ctx, []byte("version: [1\n"))
	require.ErrorAs(t, err, &ve, "not even YAML")

	p, err := ps.Get(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, good.Version, p.Version, "the stored version is kept")
}

func TestPolicySetConflict(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)

	// IfVersion: the admin edited version N; someone stored N+1 since.
	_, err := ps.Set(e.ctx, []byte(policyYAML), queue.IfVersion(3))
	require.ErrorIs(t, err, queue.ErrPolicyConflict)
	assert.Contains(t, err.Error(), "no policy is stored, not version 3")
	first, err := ps.Set(e.ctx, []byte(policyYAML), queue.IfVersion(0))
	require.NoError(t, err)
	second, err := ps.Set(e.ctx, []byte(policyJSON), queue.IfVersion(first.Version))
	require.NoError(t, err)
	_, err = ps.Set(e.ctx, []byte(policyYAML), queue.IfVersion(first.Version))
	require.ErrorIs(t, err, queue.ErrPolicyConflict)
	assert.Contains(t, err.Error(), fmt.Sprintf("version %d is stored, not version %d", second.Version, first.Version))
	_, err = ps.Set(e.ctx, []byte(policyYAML), queue.IfVersion(0))
	require.ErrorIs(t, err, queue.ErrPolicyConflict)

	// Admins racing: each Set either stores or is told of the conflict;
	// no two replace the same version, so none is overwritten unseen.
	const admins = 8
	var wg sync.WaitGroup
	results := make([]queue.SetResult, admins)
	errs := make([]error, admins)
	for i := range admins {
		wg.Go(func() {
			doc := fmt.Sprintf("version: 1\ntools: {default: approve}\n# admin %d\n", i)
			results[i], errs[i] = ps.Set(e.ctx, []byte(doc))
		})
	}
	wg.Wait()
	replaced := map[uint64]int{}
	stored := 0
	for i := range admins {
		if errs[i] != nil {
			require.ErrorIs(t, errs[i], queue.ErrPolicyConflict)
			assert.Contains(t, errs[i].Error(), "nothing was stored")
			continue
		}
		stored++
		replaced[results[i].Replaced]++
	}
	assert.Positive(t, stored)
	for v, n := range replaced {
		assert.Equal(t, 1, n, "version %d was replaced by %d admins at once", v, n)
	}
}

// policyUpdate is one call of a Watch function.
type policyUpdate struct {
	p   *policy.Policy
	err error
}

// watchPolicy watches ps and returns the channel of what fn was given.
func watchPolicy(t *testing.T, e env, ps *queue.PolicyStore) (*queue.PolicyWatcher, chan policyUpdate) {
	t.Helper()
	ch := make(chan policyUpdate, 100)
	w, err := ps.Watch(e.ctx, func(p *policy.Policy, err error) { ch <- policyUpdate{p, err} })
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	return w, ch
}

func nextUpdate(t *testing.T, ch <-chan policyUpdate, within time.Duration) policyUpdate {
	t.Helper()
	select {
	case u := <-ch:
		return u
	default:
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case u := <-ch:
		return u
	case <-timer.C:
		t.Fatalf("no policy update within %s", within)
		return policyUpdate{}
	}
}

func TestPolicyWatch(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)
	w, ch := watchPolicy(t, e, ps)

	// Nothing stored: the current state is delivered before Watch returns.
	require.Len(t, ch, 1)
	u := nextUpdate(t, ch, 0)
	require.ErrorIs(t, u.err, queue.ErrNoPolicy)
	assert.Nil(t, u.p)

	res, err := ps.Set(e.ctx, []byte(policyYAML))
	require.NoError(t, err)
	u = nextUpdate(t, ch, 5*time.Second)
	require.NoError(t, u.err)
	assert.Equal(t, res.Version, u.p.Version)
	assert.Equal(t, policy.SourceStored, u.p.Source)

	res, err = ps.Set(e.ctx, []byte(policyJSON))
	require.NoError(t, err)
	u = nextUpdate(t, ch, 5*time.Second)
	require.NoError(t, u.err)
	assert.Equal(t, res.Version, u.p.Version)
	assert.Equal(t, policy.Deny, u.p.Document().Tools.Default)

	// Someone writes the bucket directly, bypassing validation: an error,
	// never a fallback.
	kv, err := e.js.KeyValue(e.ctx, "jetpilot_policy")
	require.NoError(t, err)
	badRev, err := kv.Put(e.ctx, queue.PolicyKey, []byte("version: 1\ntools: {default: allow-all}\n"))
	require.NoError(t, err)
	u = nextUpdate(t, ch, 5*time.Second)
	assert.Nil(t, u.p)
	var spe *queue.StoredPolicyError
	require.ErrorAs(t, u.err, &spe)
	assert.Equal(t, badRev, spe.Version)
	var ve *schemas.ValidationError
	require.ErrorAs(t, u.err, &ve)
	_, err = ps.Get(e.ctx)
	require.ErrorAs(t, err, &spe, "Get says the same")

	require.NoError(t, kv.Delete(e.ctx, queue.PolicyKey))
	u = nextUpdate(t, ch, 5*time.Second)
	require.ErrorIs(t, u.err, queue.ErrNoPolicy)

	res, err = ps.Set(e.ctx, []byte(policyYAML))
	require.NoError(t, err, "a deleted policy can be set again")
	assert.Zero(t, res.Replaced)
	u = nextUpdate(t, ch, 5*time.Second)
	require.NoError(t, u.err)
	assert.Equal(t, res.Version, u.p.Version)

	require.NoError(t, kv.Purge(e.ctx, queue.PolicyKey))
	u = nextUpdate(t, ch, 5*time.Second)
	require.ErrorIs(t, u.err, queue.ErrNoPolicy)

	w.Stop()
	select {
	case <-w.Done():
	default:
		t.Fatal("Done is not closed after Stop")
	}
	_, err = ps.Set(e.ctx, []byte(policyJSON))
	require.NoError(t, err)
	// A watcher on the same key delivers that version; the stopped one must
	// have delivered nothing more by then.
	_, ch2 := watchPolicy(t, e, ps)
	require.NoError(t, nextUpdate(t, ch2, 0).err)
	assert.Empty(t, ch, "no call after Stop")
}

func TestPolicyWatchStartsWithStoredPolicy(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)
	res, err := ps.Set(e.ctx, []byte(policyYAML))
	require.NoError(t, err)
	_, ch := watchPolicy(t, e, ps)
	require.Len(t, ch, 1, "delivered before Watch returns")
	u := nextUpdate(t, ch, 0)
	require.NoError(t, u.err)
	assert.Equal(t, res.Version, u.p.Version)
}

func TestPolicyWatchEndsWithContext(t *testing.T) {
	t.Parallel()
	e, ps := newPolicyStore(t)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	calls := make(chan struct{}, 10)
	w, err := ps.Watch(ctx, func(*policy.Policy, error) { calls <- struct{}{} })
	require.NoError(t, err)
	require.Len(t, calls, 1)
	cancel()
	waitClosed(t, w.Done(), 5*time.Second)
	w.Stop() // harmless after the end

	// A context already done: no watch.
	_, err = ps.Watch(ctx, func(*policy.Policy, error) {})
	require.ErrorIs(t, err, context.Canceled)
}

func TestPolicyWatchConnectionClosed(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	ctx := testCtx(t)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{}))
	nc, js2 := testnats.Connect(t, s)
	ps, err := queue.NewPolicyStore(ctx, js2, queue.Config{})
	require.NoError(t, err)
	ch := make(chan policyUpdate, 10)
	w, err := ps.Watch(ctx, func(p *policy.Policy, err error) { ch <- policyUpdate{p, err} })
	require.NoError(t, err)
	require.ErrorIs(t, nextUpdate(t, ch, 0).err, queue.ErrNoPolicy)

	nc.Close()
	u := nextUpdate(t, ch, 5*time.Second)
	require.ErrorIs(t, u.err, queue.ErrPolicyWatchLost, "the policy in force is unknown: not \"no policy\"")
	require.NotErrorIs(t, u.err, queue.ErrNoPolicy)
	u = nextUpdate(t, ch, 5*time.Second)
	require.ErrorIs(t, u.err, queue.ErrPolicyWatchLost)
	assert.Contains(t, u.err.Error(), "connection is closed")
	waitClosed(t, w.Done(), 5*time.Second)
}

// TestPolicyWatchSurvivesServerRestart: the server goes away and comes back
// on the same port and store; the watcher, untouched, delivers the version
// stored after the restart.
func TestPolicyWatchSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	dir, port := t.TempDir(), testsupport.FreePort(t)
	startServer := func() func() {
		srv, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: dir, Port: port, Sync: queue.SyncLazy})
		require.NoError(t, err)
		return func() { srv.Shutdown(); srv.WaitForShutdown() }
	}
	stop := startServer()
	t.Cleanup(func() { stop() })
	reconnected := make(chan struct{}, 10)
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := testsupport.Context(t, 60*time.Second)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{}))
	ps, err := queue.NewPolicyStore(ctx, js, queue.Config{})
	require.NoError(t, err)
	first, err := ps.Set(ctx, []byte(policyYAML))
	require.NoError(t, err)

	ch := make(chan policyUpdate, 10)
	w, err := ps.Watch(ctx, func(p *policy.Policy, err error) { ch <- policyUpdate{p, err} })
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	u := nextUpdate(t, ch, 0)
	require.NoError(t, u.err)
	require.Equal(t, first.Version, u.p.Version)

	stop()
	stop = startServer()
	waitClosed(t, reconnected, 20*time.Second)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		// JetStream may take a moment to answer after the restart.
		_, err := ps.Get(ctx)
		assert.NoError(c, err)
	}, 20*time.Second, 50*time.Millisecond)
	res, err := ps.Set(ctx, []byte(policyJSON), queue.IfVersion(first.Version))
	require.NoError(t, err)
	// The watcher starts again at the reconnect, without waiting for the
	// ordered consumer to miss its heartbeats.
	u = nextUpdate(t, ch, 5*time.Second)
	require.NoError(t, u.err)
	assert.Equal(t, res.Version, u.p.Version)
	assert.Empty(t, ch)
}

func waitClosed[T any](t *testing.T, ch <-chan T, within time.Duration) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatalf("not closed or signalled within %s", within)
	}
}
