package queue_test

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/queue"
)

func TestSetupStreamsMatchDesign(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	// Twice: idempotent.
	require.NoError(t, queue.Setup(e.ctx, e.js, queue.Config{}))

	want := []struct {
		name, subject string
		retention     jetstream.RetentionPolicy
		maxAge        time.Duration
		dupWindow     time.Duration
		extra         []string // more subjects
	}{
		{"JETPILOT_JOBS", "jetpilot.jobs.>", jetstream.WorkQueuePolicy, 0, 24 * time.Hour, nil},
		{"JETPILOT_RESULTS", "jetpilot.results.>", jetstream.LimitsPolicy, 7 * 24 * time.Hour, 24 * time.Hour, nil},
		{"JETPILOT_APPROVALS", "jetpilot.approvals.>", jetstream.LimitsPolicy, 7 * 24 * time.Hour, 24 * time.Hour, nil},
		{"JETPILOT_DECISIONS", "jetpilot.decisions.>", jetstream.WorkQueuePolicy, 7 * 24 * time.Hour, 24 * time.Hour, nil},
		{"JETPILOT_EVENTS", "jetpilot.events.>", jetstream.LimitsPolicy, time.Hour, 2 * time.Minute, nil},
		{"JETPILOT_DEAD", "jetpilot.dead.>", jetstream.LimitsPolicy, 30 * 24 * time.Hour, 24 * time.Hour, nil},
		{"JETPILOT_CONTROL", "jetpilot.control.>", jetstream.WorkQueuePolicy, 7 * 24 * time.Hour, 24 * time.Hour, nil},
		{"JETPILOT_AUDIT", "jetpilot.audit.>", jetstream.LimitsPolicy, 400 * 24 * time.Hour, 24 * time.Hour, []string{"jetpilot.policy_audit"}},
		{"JETPILOT_SCHEDULES", "jetpilot.schedules.>", jetstream.LimitsPolicy, 0, 2 * time.Minute, nil},
	}
	for _, w := range want {
		s, err := e.js.Stream(e.ctx, w.name)
		require.NoError(t, err, w.name)
		sc := s.CachedInfo().Config
		assert.Equal(t, append([]string{w.subject}, w.extra...), sc.Subjects, w.name)
		audit := w.name == "JETPILOT_AUDIT"
		assert.Equal(t, audit, sc.DenyDelete, w.name)
		assert.Equal(t, audit, sc.DenyPurge, w.name)
		schedules := w.name == "JETPILOT_SCHEDULES"
		assert.Equal(t, schedules, sc.AllowRollup, w.name)
		assert.Equal(t, schedules, sc.AllowMsgSchedules, w.name)
		assert.Equal(t, w.retention, sc.Retention, w.name)
		assert.Equal(t, jetstream.FileStorage, sc.Storage, w.name)
		assert.Equal(t, w.maxAge, sc.MaxAge, w.name)
		assert.Equal(t, w.dupWindow, sc.Duplicates, w.name)
		assert.Equal(t, 1, sc.Replicas, w.name)
	}
	names := e.js.StreamNames(e.ctx)
	var got []string
	for n := range names.Name() {
		got = append(got, n)
	}
	require.NoError(t, names.Err())
	slices.Sort(got)
	assert.Equal(t, []string{"JETPILOT_APPROVALS", "JETPILOT_AUDIT", "JETPILOT_CONTROL", "JETPILOT_DEAD", "JETPILOT_DECISIONS", "JETPILOT_EVENTS",
		"JETPILOT_JOBS", "JETPILOT_RESULTS", "JETPILOT_SCHEDULES", "KV_jetpilot_keys", "KV_jetpilot_policy", "KV_jetpilot_runs"}, got)

	kv, err := e.js.KeyValue(e.ctx, "jetpilot_runs")
	require.NoError(t, err)
	st, err := kv.Status(e.ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.History())
}

func TestSetupUpdatesSettings(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	cfg := queue.Config{ResultsMaxAge: 48 * time.Hour, EventsMaxAge: 10 * time.Minute}
	require.NoError(t, queue.Setup(e.ctx, e.js, cfg))

	s, err := e.js.Stream(e.ctx, "JETPILOT_RESULTS")
	require.NoError(t, err)
	assert.Equal(t, 48*time.Hour, s.CachedInfo().Config.MaxAge)
	assert.Equal(t, 24*time.Hour, s.CachedInfo().Config.Duplicates)
	s, err = e.js.Stream(e.ctx, "JETPILOT_EVENTS")
	require.NoError(t, err)
	assert.Equal(t, 10*time.Minute, s.CachedInfo().Config.MaxAge)
}

func TestSetupRejectsBadConfig(t *testing.T) {
	t.Parallel()
	_, _, js := testnats.Start(t)
	err := queue.Setup(testCtx(t), js, queue.Config{Prefix: "has space"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `prefix "has space": contains whitespace`)
}

func TestPrefixChangesEveryName(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{Prefix: "acme"}
	e := setupEnv(t, cfg)
	for _, name := range []string{"ACME_JOBS", "ACME_RESULTS", "ACME_APPROVALS", "ACME_DECISIONS", "ACME_EVENTS", "ACME_DEAD", "ACME_CONTROL", "ACME_AUDIT", "ACME_SCHEDULES"} {
		_, err := e.js.Stream(e.ctx, name)
		require.NoError(t, err, name)
	}
	_, err := e.js.Stream(e.ctx, "JETPILOT_JOBS")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	_, err = e.js.KeyValue(e.ctx, "acme_runs")
	require.NoError(t, err)

	cons, err := cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.NoError(t, err)
	require.Len(t, cons, 1)
	assert.Equal(t, "acme-workers", cons[0].CachedInfo().Name)
	assert.Equal(t, "acme.jobs.>", cons[0].CachedInfo().Config.FilterSubject)
	dc, err := cfg.EnsureDecisionConsumer(e.ctx, e.js)
	require.NoError(t, err)
	assert.Equal(t, "acme-deciders", dc.CachedInfo().Name)

	c := queue.NewClient(e.js, cfg)
	ack, err := c.Submit(e.ctx, validJob("p1"))
	require.NoError(t, err)
	assert.Equal(t, "ACME_JOBS", ack.Stream)
	msg, err := cons[0].Next()
	require.NoError(t, err)
	assert.Equal(t, "acme.jobs.default", msg.Subject())
}

func TestWorkerConsumerConfig(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	cons, err := e.cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.NoError(t, err)
	require.Len(t, cons, 1)
	info := cons[0].CachedInfo()
	assert.Equal(t, "jetpilot-workers", info.Name)
	assert.Equal(t, "jetpilot-workers", info.Config.Durable)
	assert.Equal(t, "jetpilot.jobs.>", info.Config.FilterSubject)
	assert.Equal(t, jetstream.AckExplicitPolicy, info.Config.AckPolicy)
	assert.Equal(t, 30*time.Second, info.Config.AckWait)
	assert.Equal(t, -1, info.Config.MaxDeliver, "the worker dead-letters by itself; JetStream must not drop silently")
	assert.Equal(t, 1000, info.Config.MaxAckPending)
	assert.Empty(t, info.Config.DeliverSubject, "pull consumer")

	// Again: idempotent, and it can update.
	cfg := queue.Config{AckWait: time.Minute}
	cons, err = cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.NoError(t, err)
	assert.Equal(t, time.Minute, cons[0].CachedInfo().Config.AckWait)

	dc, err := e.cfg.EnsureDecisionConsumer(e.ctx, e.js)
	require.NoError(t, err)
	di := dc.CachedInfo()
	assert.Equal(t, "jetpilot-deciders", di.Name)
	assert.Equal(t, "jetpilot.decisions.>", di.Config.FilterSubject)
	assert.Equal(t, jetstream.AckExplicitPolicy, di.Config.AckPolicy)
}

func TestProfileConsumers(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	cons, err := e.cfg.EnsureWorkerConsumer(e.ctx, e.js, []string{"gpu", "cpu", "gpu"})
	require.NoError(t, err)
	require.Len(t, cons, 2, "duplicates collapse")
	assert.Equal(t, "jetpilot-workers-gpu", cons[0].CachedInfo().Name)
	assert.Equal(t, "jetpilot.jobs.gpu", cons[0].CachedInfo().Config.FilterSubject)
	assert.Equal(t, "jetpilot-workers-cpu", cons[1].CachedInfo().Name)

	// A second worker sharing one profile is fine.
	_, err = e.cfg.EnsureWorkerConsumer(e.ctx, e.js, []string{"cpu", "arm"})
	require.NoError(t, err)

	// A job on "gpu" goes to the gpu consumer only.
	c := queue.NewClient(e.js, e.cfg)
	j := validJob("g1")
	j.Profile = "gpu"
	_, err = c.Submit(e.ctx, j)
	require.NoError(t, err)
	msg, err := cons[0].Next()
	require.NoError(t, err)
	assert.Equal(t, "jetpilot.jobs.gpu", msg.Subject())

	// Now a catch-all worker: clear error.
	_, err = e.cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.Error(t, err)
	require.ErrorIs(t, err, queue.ErrConsumerConflict)
	assert.Contains(t, err.Error(), "per-profile worker consumers exist")
	assert.Contains(t, err.Error(), "jetpilot-workers-gpu")
	assert.Contains(t, err.Error(), "give this worker --profiles")

	_, err = e.cfg.EnsureWorkerConsumer(e.ctx, e.js, []string{"bad.profile"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `profile "bad.profile": contains a dot`)
}

func TestProfileConsumersAfterCatchAll(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	_, err := e.cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.NoError(t, err)
	_, err = e.cfg.EnsureWorkerConsumer(e.ctx, e.js, []string{"gpu"})
	require.Error(t, err)
	require.True(t, errors.Is(err, queue.ErrConsumerConflict), "%v", err)
	assert.Contains(t, err.Error(), "a catch-all worker consumer exists (jetpilot-workers); workers with --profiles cannot share the stream JETPILOT_JOBS with it")

	s, err := e.js.Stream(e.ctx, "JETPILOT_JOBS")
	require.NoError(t, err)
	var names []string
	for n := range s.ConsumerNames(e.ctx).Name() {
		names = append(names, n)
	}
	assert.True(t, slices.Equal([]string{"jetpilot-workers"}, names), "nothing half-created: %v", names)
}

func TestSetupAppliesLimits(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	want := map[string]struct {
		maxBytes int64
		discard  jetstream.DiscardPolicy
	}{
		"JETPILOT_JOBS":      {1 << 30, jetstream.DiscardNew},
		"JETPILOT_RESULTS":   {1 << 30, jetstream.DiscardOld},
		"JETPILOT_APPROVALS": {256 << 20, jetstream.DiscardOld},
		"JETPILOT_DECISIONS": {64 << 20, jetstream.DiscardNew},
		"JETPILOT_CONTROL":   {64 << 20, jetstream.DiscardNew},
		"JETPILOT_EVENTS":    {1 << 30, jetstream.DiscardOld},
		"JETPILOT_DEAD":      {1 << 30, jetstream.DiscardOld},
		"JETPILOT_AUDIT":     {1 << 30, jetstream.DiscardNew},
	}
	check := func(overrides map[string]int64) {
		t.Helper()
		for name, w := range want {
			s, err := e.js.Stream(e.ctx, name)
			require.NoError(t, err, name)
			sc := s.CachedInfo().Config
			mb := w.maxBytes
			if o, ok := overrides[name]; ok {
				mb = o
			}
			assert.Equal(t, mb, sc.MaxBytes, name)
			assert.Equal(t, w.discard, sc.Discard, name)
		}
	}
	check(nil)

	// Again with the same config: nothing changes.
	require.NoError(t, queue.Setup(e.ctx, e.js, queue.Config{}))
	check(nil)

	// Changed limits are applied, twice over harmlessly; -1 is unlimited.
	cfg := queue.Config{JobsMaxBytes: 8 << 20, EventsMaxBytes: queue.UnlimitedBytes, AuditMaxBytes: 2 << 30}
	for range 2 {
		require.NoError(t, queue.Setup(e.ctx, e.js, cfg))
		check(map[string]int64{"JETPILOT_JOBS": 8 << 20, "JETPILOT_EVENTS": -1, "JETPILOT_AUDIT": 2 << 30})
	}
	// And back to the defaults.
	require.NoError(t, queue.Setup(e.ctx, e.js, queue.Config{}))
	check(nil)
}

func TestSetupRejectsBadLimits(t *testing.T) {
	t.Parallel()
	err := queue.Config{JobsMaxBytes: -2, DeadMaxBytes: -5, AuditMaxBytes: -3, AuditMaxAge: -time.Hour}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "audit max bytes: must be positive, or -1 for unlimited, got -3")
	assert.Contains(t, err.Error(), "audit max age: must not be negative")
	assert.Contains(t, err.Error(), "jobs max bytes: must be positive, or -1 for unlimited, got -2")
	assert.Contains(t, err.Error(), "dead max bytes: must be positive, or -1 for unlimited, got -5")
}

func TestFullJobsStreamRefusesSubmit(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	e := setupEnv(t, queue.Config{JobsMaxBytes: limit})
	c := queue.NewClient(e.js, e.cfg)
	job := validJob("fill-0")
	job.Prompt = strings.Repeat("x", 4<<10)
	var err error
	submitted := 0
	// Bounded: 64 KiB holds fewer than 16 jobs of 4 KiB.
	for i := range 64 {
		job.ID = fmt.Sprintf("fill-%d", i)
		if _, err = c.Submit(e.ctx, job); err != nil {
			break
		}
		submitted++
	}
	require.Error(t, err, "a full JOBS stream must refuse the publish")
	assert.Positive(t, submitted)
	assert.Less(t, submitted, 16)
	assert.True(t, queue.IsStreamFull(err), "%v", err)
	assert.Contains(t, err.Error(), fmt.Sprintf("submit job %q", job.ID))
	assert.Contains(t, err.Error(), "maximum bytes exceeded")
	explained := queue.ExplainStreamFull(e.cfg.JobsStream(), err)
	assert.Contains(t, explained.Error(), "stream JETPILOT_JOBS is full")
	assert.ErrorIs(t, explained, err)

	// Nothing old was dropped to make room: every accepted job is there.
	s, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	require.NoError(t, err)
	info, err := s.Info(e.ctx)
	require.NoError(t, err)
	assert.EqualValues(t, submitted, info.State.Msgs)
	assert.EqualValues(t, 1, info.State.FirstSeq)

	// Other errors are not "full".
	assert.False(t, queue.IsStreamFull(errors.New("maximum bytes exceeded")))
	assert.Equal(t, io.EOF, queue.ExplainStreamFull("X", io.EOF))
}
