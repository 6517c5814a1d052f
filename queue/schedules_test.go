package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// firingHeaders are the headers a firing of schedule name for profile
// carries in JOBS, as the server writes them.
func firingHeaders(name, profile string) nats.Header {
	h := nats.Header{}
	h.Set(queue.HeaderScheduler, "jetpilot.schedules."+name)
	h.Set(queue.HeaderScheduleNext, "2026-12-02T01:50:46Z")
	h.Set(queue.HeaderStreamSource, "JETPILOT_SCHEDULES 17 jetpilot.schedules.*.* jetpilot.jobs.{{wildcard(2)}} jetpilot.schedules."+name+"."+profile)
	return h
}

func TestFiringOfDerivesTheJobID(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}
	stored := time.Date(2026, 12, 2, 2, 50, 45, 999_000_000, time.FixedZone("CET", 3600))

	f, ok, err := cfg.FiringOf(firingHeaders("nightly-report", "default"), stored)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, queue.Firing{Schedule: "nightly-report", JobID: "nightly-report:2026-12-02T01:50:45Z"}, f,
		"UTC, to the second (truncated, not rounded)")
	require.NoError(t, schemas.ValidateJobID(f.JobID))
	longest := strings.Repeat("n", queue.MaxScheduleNameLen)
	require.NoError(t, schemas.ValidateJobID(queue.FiringJobID(longest, stored)), "the longest name still makes a valid job id")

	// The same message delivered again: the same id.
	again, _, err := cfg.FiringOf(firingHeaders("nightly-report", "default"), stored)
	require.NoError(t, err)
	assert.Equal(t, f, again)

	// An ordinary job.
	_, ok, err = cfg.FiringOf(nats.Header{}, stored)
	require.NoError(t, err)
	assert.False(t, ok)

	for name, h := range map[string]nats.Header{
		"not sourced": {queue.HeaderScheduler: {"jetpilot.schedules.x"}},
		"sourced from another stream": func() nats.Header {
			h := firingHeaders("x", "default")
			h.Set(queue.HeaderStreamSource, "OTHER 3 > > jetpilot.schedules.x.default")
			return h
		}(),
		"from another schedule's subject": func() nats.Header {
			h := firingHeaders("x", "default")
			h.Set(queue.HeaderScheduler, "jetpilot.schedules.y")
			return h
		}(),
		"scheduler not a schedule": func() nats.Header {
			h := firingHeaders("x", "default")
			h.Set(queue.HeaderScheduler, "jetpilot.jobs.x")
			return h
		}(),
		"bad name": func() nats.Header {
			h := firingHeaders("x", "default")
			h.Set(queue.HeaderScheduler, "jetpilot.schedules.a.b")
			return h
		}(),
		"short source header": func() nats.Header {
			h := firingHeaders("x", "default")
			h.Set(queue.HeaderStreamSource, "JETPILOT_SCHEDULES 17")
			return h
		}(),
	} {
		_, ok, err := cfg.FiringOf(h, stored)
		assert.True(t, ok, name)
		assert.ErrorContains(t, err, "scheduled job: ", name)
	}
	_, _, err = cfg.FiringOf(firingHeaders("x", "default"), time.Time{})
	assert.ErrorContains(t, err, "no stored time")

	// Another prefix has its own stream and subjects.
	_, _, err = queue.Config{Prefix: "acme"}.FiringOf(firingHeaders("x", "default"), stored)
	assert.ErrorContains(t, err, "is not a schedule of ACME_SCHEDULES")
}

func TestFiringJobAndStamp(t *testing.T) {
	t.Parallel()
	f := queue.Firing{Schedule: "s", JobID: "s:2026-12-02T01:50:45Z"}
	job, err := schemas.DecodeJob(f.Job([]byte(` {"prompt":"hi","metadata":{"a":"b"}}`)))
	require.NoError(t, err)
	assert.Equal(t, "s:2026-12-02T01:50:45Z", job.ID)
	md, err := f.Stamp(job.Metadata)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"a": "b", queue.ScheduleMetadataKey: "s"}, md)
	assert.Equal(t, map[string]string{"a": "b"}, job.Metadata, "the job's own map is left alone")

	_, err = schemas.DecodeJob(f.Job([]byte(`{}`)))
	assert.ErrorContains(t, err, "prompt", "an empty template decodes (and is rejected for its missing prompt)")
	_, err = schemas.DecodeJob(f.Job([]byte(`{"id":"mine","prompt":"hi"}`)))
	assert.ErrorContains(t, err, `duplicate key "id"`, "a template's own id is not silently replaced")

	full := map[string]string{}
	for i := range 64 {
		full[strings.Repeat("k", i+1)] = "v"
	}
	_, err = f.Stamp(full)
	assert.ErrorContains(t, err, "at most 63 keys")
}

func TestValidateCron(t *testing.T) {
	t.Parallel()
	for _, good := range []struct{ pattern, tz string }{
		{"0 0 9 * * MON-FRI", ""},
		{"0 0 9 * * MON-FRI", "Europe/Berlin"},
		{"*/5 * * * * *", ""},
		{"0 30 2 1,15 JAN-JUN ?", "UTC"},
		{"@daily", ""},
		{"@hourly", "America/New_York"},
		{"@every 1s", ""},
		{"@every 1h30m", ""},
	} {
		s, err := queue.ValidateCron(good.pattern, good.tz)
		require.NoError(t, err, good.pattern)
		assert.False(t, s.Next(time.Now()).IsZero(), good.pattern)
	}
	for _, bad := range []struct{ pattern, tz, want string }{
		{"0 9 * * MON-FRI", "", "has 5 fields, want 6: second minute hour"},
		{"", "", "empty; want 6 fields"},
		{"0 61 * * * *", "", "field 2, minute (0-59), \"61\""},
		{"0 0 9 * * FUNDAY", "", "field 6, day of week"},
		{"0 0 0 30 2 *", "", "matches no date (such as 30 February)"},
		{"@every 500ms", "", "at least 1s"},
		{"@every 1m", "UTC", "@every takes no time zone"},
		{"@every soon", "", "want \"@every <duration>\""},
		{"@at 2026-12-24T18:00:00Z", "", "@at fires once"},
		{"@fortnightly", "", "unknown descriptor"},
		{"TZ=UTC 0 0 9 * * *", "", "--timezone"},
		{" 0 0 9 * * *", "", "single spaces"},
		{"0 0 9 * * *", "Mars/Olympus", `time zone "Mars/Olympus"`},
	} {
		_, err := queue.ValidateCron(bad.pattern, bad.tz)
		assert.ErrorContains(t, err, bad.want, "%q", bad.pattern)
	}
}

func TestValidateScheduleName(t *testing.T) {
	t.Parallel()
	require.NoError(t, queue.ValidateScheduleName("nightly_report-2"))
	for _, bad := range []string{"", "a.b", "a:b", "a b", "a*", strings.Repeat("x", 65)} {
		assert.Error(t, queue.ValidateScheduleName(bad), "%q", bad)
	}
}

func TestSchedulesSupportedByVersion(t *testing.T) {
	t.Parallel()
	for v, before := range map[string]bool{"2.11.3": true, "2.13.9": true, "2.14.0": false, "v2.14.0-RC.1": false, "2.15.2": false, "3.0.0": false, "junk": false} {
		assert.Equal(t, before, queue.VersionBefore(v, queue.MinSchedulesServer), v)
	}
	_, nc, _ := testnats.Start(t)
	require.NoError(t, queue.SchedulesSupported(nc), "the embedded server (%s) has schedules", nc.ConnectedServerVersion())
}

// jobsMsgs reads the jobs in JOBS on profile's subject (a work queue: no
// consumer may read it but the workers'). It fails no test.
func jobsMsgs(e env, profile string) []*jetstream.RawStreamMsg {
	s, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	if err != nil {
		return nil
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); seq <= s.CachedInfo().State.LastSeq; seq++ {
		if m, err := s.GetMsg(e.ctx, seq); err == nil && m.Subject == e.cfg.JobSubject(profile) {
			out = append(out, m)
		}
	}
	return out
}

// streamState reads a stream's state.
func streamState(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	return s.CachedInfo().State
}

func TestScheduleFiresIntoJobsUntilRemoved(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	store := queue.NewSchedules(e.js, e.cfg)
	job := schemas.Job{Prompt: "tick", Profile: "ops", Metadata: map[string]string{"team": "sre"}}
	require.NoError(t, store.Add(e.ctx, queue.Schedule{Name: "tick", Cron: "@every 1s", Job: job}))
	// A second schedule, a clock to wait on once the first is removed.
	require.NoError(t, store.Add(e.ctx, queue.Schedule{Name: "clock", Cron: "* * * * * *", Job: schemas.Job{Prompt: "clock"}}))

	err := store.Add(e.ctx, queue.Schedule{Name: "tick", Cron: "@every 1s", Job: job})
	require.ErrorIs(t, err, queue.ErrScheduleExists)
	assert.ErrorContains(t, err, "jetpilot schedule rm tick")

	// Firings arrive on the profile's jobs subject, named by the worker's rule.
	var firings []*jetstream.RawStreamMsg
	require.Eventually(t, func() bool {
		firings = jobsMsgs(e, "ops")
		return len(firings) >= 2
	}, 15*time.Second, 20*time.Millisecond, "two firings of tick reach JOBS")
	ids := map[string]bool{}
	for _, m := range firings {
		f, ok, err := e.cfg.FiringOf(m.Header, m.Time)
		require.NoError(t, err)
		require.True(t, ok, "headers %v", m.Header)
		assert.Equal(t, "tick", f.Schedule)
		ids[f.JobID] = true
		fired, err := schemas.DecodeJob(f.Job(m.Data))
		require.NoError(t, err)
		assert.Equal(t, "tick", fired.Prompt)
		assert.Equal(t, "ops", fired.Profile)
		assert.Empty(t, m.Header.Get(queue.HeaderSchedule), "the schedule's own headers are not copied")
	}
	assert.Len(t, ids, len(firings), "every firing has an id of its own")
	js, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	require.NoError(t, err)
	for seq := uint64(1); seq <= js.CachedInfo().State.LastSeq; seq++ {
		m, err := js.GetMsg(e.ctx, seq)
		require.NoError(t, err)
		assert.NotEmpty(t, m.Header.Get(queue.HeaderScheduler), "only firings reach JOBS, never a definition: %s %v", m.Subject, m.Header)
	}

	list, err := store.List(e.ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, "clock", list[0].Name)
	tick := list[1]
	assert.Equal(t, "tick", tick.Name)
	assert.Equal(t, "@every 1s", tick.Cron)
	assert.Equal(t, job, tick.Job)
	assert.NoError(t, tick.Invalid)
	assert.False(t, tick.LastFired.IsZero())
	assert.WithinDuration(t, time.Now().Add(time.Second), tick.Next, 2*time.Second)

	// rm: tick stops while the clock goes on.
	require.NoError(t, store.Remove(e.ctx, "tick"))
	require.ErrorIs(t, store.Remove(e.ctx, "tick"), queue.ErrScheduleNotFound)
	_, err = store.Get(e.ctx, "tick")
	require.ErrorIs(t, err, queue.ErrScheduleNotFound)
	count := func(profile string) int { return len(jobsMsgs(e, profile)) }
	clock0 := count("default")
	require.Eventually(t, func() bool { return count("default") >= clock0+1 }, 15*time.Second, 20*time.Millisecond, "the clock fires")
	// A firing stored just before rm may still be on its way to JOBS; none
	// comes after the clock has fired twice more.
	ticks := count("ops")
	clock1 := count("default")
	require.Eventually(t, func() bool { return count("default") >= clock1+2 }, 15*time.Second, 20*time.Millisecond, "the clock fires twice more")
	assert.Equal(t, ticks, count("ops"), "tick fires no more once removed")
	st := streamState(e.ctx, t, e.js, e.cfg.SchedulesStream())
	s, err := e.js.Stream(e.ctx, e.cfg.SchedulesStream())
	require.NoError(t, err)
	_, err = s.GetLastMsgForSubject(e.ctx, e.cfg.ScheduleFireSubject("tick", "ops"))
	assert.ErrorIs(t, err, jetstream.ErrMsgNotFound, "rm removes the last firing too (stream state %+v)", st)
}

func TestScheduleAddRefusesBadInput(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	store := queue.NewSchedules(e.js, e.cfg)
	ok := schemas.Job{Prompt: "hi"}
	for _, c := range []struct {
		sch  queue.Schedule
		want string
	}{
		{queue.Schedule{Name: "a.b", Cron: "@daily", Job: ok}, `schedule name "a.b": contains a dot`},
		{queue.Schedule{Name: "a", Cron: "0 9 * * *", Job: ok}, "has 5 fields, want 6"},
		{queue.Schedule{Name: "a", Cron: "@daily", Job: schemas.Job{ID: "x", Prompt: "hi"}}, "no id of its own"},
		{queue.Schedule{Name: "a", Cron: "@daily", Job: schemas.Job{}}, "prompt"},
		{queue.Schedule{Name: "a", Cron: "@daily", Job: schemas.Job{Prompt: "hi", Timeout: "soon"}}, "timeout"},
		{queue.Schedule{Name: "a", Cron: "@daily", Job: schemas.Job{Prompt: "hi", Metadata: map[string]string{queue.ScheduleMetadataKey: "x"}}}, "is set by the worker"},
	} {
		assert.ErrorContains(t, store.Add(e.ctx, c.sch), c.want, "%+v", c.sch)
	}

	// A pattern the server refuses anyway comes back with its reason.
	tmpl, err := queue.Template(ok)
	require.NoError(t, err)
	err = store.PublishUnchecked(e.ctx, queue.Schedule{Name: "a", Cron: "0 0 9 * * 8", Job: ok}, tmpl)
	assert.ErrorContains(t, err, "the NATS server refused it: ")
	assert.ErrorContains(t, err, "pattern is invalid")

	list, err := store.List(e.ctx)
	require.NoError(t, err)
	assert.Empty(t, list, "nothing was stored")
}

// A client cannot pass a job off as a firing: the server refuses both
// headers FiringOf relies on when they are published into JOBS.
func TestForgedFiringHeadersAreRefused(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	for name, h := range map[string]nats.Header{
		"Nats-Scheduler":     {queue.HeaderScheduler: {"jetpilot.schedules.x"}},
		"Nats-Stream-Source": firingHeaders("x", "default"),
		"schedule purge":     {queue.HeaderScheduler: {"jetpilot.schedules.x"}, queue.HeaderScheduleNext: {"purge"}},
	} {
		msg := &nats.Msg{Subject: e.cfg.JobSubject("default"), Header: h, Data: []byte(`{"prompt":"forged"}`)}
		_, err := e.js.PublishMsg(e.ctx, msg)
		var apiErr *jetstream.APIError
		assert.ErrorAs(t, err, &apiErr, name)
	}
	assert.Zero(t, streamState(e.ctx, t, e.js, e.cfg.JobsStream()).Msgs)
}

func TestSetupAddsTheSchedulesSourceToAnExistingJobsStream(t *testing.T) {
	t.Parallel()
	_, _, js := testnats.Start(t)
	ctx := testCtx(t)
	cfg := queue.Config{}.WithDefaults()
	// JOBS as an earlier version created it: no source.
	old := cfg.StreamConfigs()[0]
	require.Equal(t, cfg.JobsStream(), old.Name)
	old.Sources = nil
	_, err := js.CreateStream(ctx, old)
	require.NoError(t, err)
	_, err = queue.NewClient(js, cfg).Submit(ctx, schemas.Job{ID: "queued", Prompt: "hi"})
	require.NoError(t, err)
	store := queue.NewSchedules(js, cfg)

	require.NoError(t, queue.Setup(ctx, js, cfg))
	sources := func() []*jetstream.StreamSource {
		s, err := js.Stream(ctx, cfg.JobsStream())
		require.NoError(t, err)
		return s.CachedInfo().Config.Sources
	}
	first := sources()
	require.Len(t, first, 1)
	assert.Equal(t, cfg.SchedulesStream(), first[0].Name)
	assert.Equal(t, []jetstream.SubjectTransformConfig{{Source: "jetpilot.schedules.*.*", Destination: "jetpilot.jobs.{{wildcard(2)}}"}}, first[0].SubjectTransforms)
	assert.EqualValues(t, 1, streamState(ctx, t, js, cfg.JobsStream()).Msgs, "the queued job is still there")

	// Idempotent: the source is left exactly as it is.
	require.NoError(t, store.Add(ctx, queue.Schedule{Name: "s", Cron: "* * * * * *", Job: schemas.Job{Prompt: "hi"}}))
	require.Eventually(t, func() bool { return streamState(ctx, t, js, cfg.JobsStream()).Msgs >= 2 }, 15*time.Second, 20*time.Millisecond, "a firing arrives")
	require.NoError(t, queue.Setup(ctx, js, cfg))
	assert.Equal(t, first, sources())

	// A JOBS deleted and made again does not take in the firings SCHEDULES
	// still keeps: they were the old one's.
	require.NoError(t, store.Remove(ctx, "s"))
	last := streamState(ctx, t, js, cfg.SchedulesStream()).LastSeq
	require.NoError(t, js.DeleteStream(ctx, cfg.JobsStream()))
	require.NoError(t, queue.Setup(ctx, js, cfg))
	again := sources()
	require.Len(t, again, 1)
	assert.Equal(t, last+1, again[0].OptStartSeq)
}

func TestScheduleAddNeedsTheJobsSource(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	s, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	require.NoError(t, err)
	sc := s.CachedInfo().Config
	sc.Sources = nil
	_, err = e.js.UpdateStream(e.ctx, sc)
	require.NoError(t, err)
	err = queue.NewSchedules(e.js, e.cfg).Add(e.ctx, queue.Schedule{Name: "a", Cron: "@daily", Job: schemas.Job{Prompt: "hi"}})
	assert.ErrorContains(t, err, "stream JETPILOT_JOBS does not source JETPILOT_SCHEDULES, so no firing would reach a worker: run `jetpilot setup`")
}
