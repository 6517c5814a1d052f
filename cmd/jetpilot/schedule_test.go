package main_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// runErr runs jetpilot and returns stdout, stderr and the exit code.
func runErr(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	stdout, stderr, code, err := tryRun(nil, stdin, args...)
	require.NoError(t, err)
	return stdout, stderr, code
}

// TestScheduleCommands: add, ls and rm with two worker processes running:
// every firing is one job with one result.
func TestScheduleCommands(t *testing.T) {
	s, _, js := testnats.Start(t)
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	url := testnats.URL(s)

	// Before setup: a clear error.
	_, stderr, code := runErr(t, "", "schedule", "add", "early", "--nats", url, "--cron", "@daily", "--prompt", "hi")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "stream JETPILOT_SCHEDULES does not exist: run `jetpilot setup`")

	out, code := run(t, "", "setup", "--nats", url)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "stream JETPILOT_SCHEDULES ready: limits, file storage, max age none, max bytes 64MiB, discard old")
	assert.Contains(t, out, "message schedules, 1 message per subject")
	assert.Contains(t, out, "duplicate window 24h0m0s, sources JETPILOT_SCHEDULES")

	// Bad input, refused before anything is stored.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cron", "0 9 * * MON-FRI", "--prompt", "hi"}, `cron "0 9 * * MON-FRI": has 5 fields, want 6`},
		{[]string{"--cron", "0 0 25 * * *", "--prompt", "hi"}, `field 3, hour (0-23), "25"`},
		{[]string{"--prompt", "hi"}, "give --cron"},
		{[]string{"--cron", "@daily", "--timezone", "Nowhere/City", "--prompt", "hi"}, `time zone "Nowhere/City"`},
		{[]string{"--cron", "@daily", "--prompt", "hi", "--timeout", "soon"}, "invalid job: "},
		{[]string{"--cron", "@daily", "--prompt", "hi", "--metadata", queue.ScheduleMetadataKey + "=x"}, "is set by the worker"},
	} {
		_, stderr, code := runErr(t, "", append([]string{"schedule", "add", "bad", "--nats", url}, c.args...)...)
		assert.Equal(t, 2, code, "%v: %s", c.args, stderr)
		assert.Contains(t, stderr, c.want, c.args)
	}
	_, stderr, code = runErr(t, "", "schedule", "add", "a.b", "--nats", url, "--cron", "@daily", "--prompt", "hi")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, `schedule name "a.b": contains a dot`)
	_, stderr, code = runErr(t, `{"id":"mine","prompt":"hi"}`, "schedule", "add", "stdin", "--nats", url, "--cron", "@daily")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "the job on stdin has an id")

	// A job from stdin, in a time zone.
	out, code = run(t, `{"prompt":"weekly report","profile":"reports"}`, "schedule", "add", "weekly", "--nats", url,
		"--cron", "0 0 9 * * MON", "--timezone", "Europe/Berlin")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, `added schedule weekly: "0 0 9 * * MON" in Europe/Berlin, profile reports; next firing `)

	for _, name := range []string{"w1", "w2"} {
		start(t, nil, "worker", "--nats", url, "--agent-url", simURL, "--name", name)
	}
	out, code = run(t, "", "schedule", "add", "tick", "--nats", url, "--cron", "@every 1s", "--prompt", "tick\n#sim text tock", "--metadata", "team=sre")
	require.Equal(t, 0, code, out)
	_, stderr, code = runErr(t, "", "schedule", "add", "tick", "--nats", url, "--cron", "@every 1s", "--prompt", "again")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "schedule already exists: remove it first (jetpilot schedule rm tick)")

	client := queue.NewClient(js, queue.Config{})
	ctx := testsupport.Context(t, waitFor)
	jobs, err := js.Stream(ctx, "JETPILOT_JOBS")
	require.NoError(t, err)
	fired := func() uint64 {
		info, err := jobs.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.LastSeq
	}
	require.Eventually(t, func() bool { return fired() >= 2 }, waitFor, 20*time.Millisecond, "two firings")

	out, code = run(t, "", "schedule", "ls", "--nats", url)
	require.Equal(t, 0, code, out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3, out)
	assert.Regexp(t, `^NAME\s+CRON\s+TIMEZONE\s+PROFILE\s+NEXT\s+LAST$`, lines[0])
	assert.Regexp(t, `^tick\s+@every 1s\s+UTC\s+default\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+\d{4}-\d\d-\d\dT`, lines[1])
	assert.Regexp(t, `^weekly\s+0 0 9 \* \* MON\s+Europe/Berlin\s+reports\s+\d{4}-\d\d-\d\dT(07|08):00:00Z\s+-$`, lines[2])

	out, code = run(t, "", "schedule", "rm", "tick", "--nats", url)
	require.Equal(t, 0, code, out)
	assert.Equal(t, "removed schedule tick\n", out)
	_, stderr, code = runErr(t, "", "schedule", "rm", "tick", "--nats", url)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no schedule named tick")

	// Every firing JOBS took in: one result, one run.
	var results []schemas.Result
	require.Eventually(t, func() bool {
		n := fired()
		msgs, err := testsupport.ReadStream(ctx, js, "JETPILOT_RESULTS", "jetpilot.results.>")
		if err != nil {
			return false
		}
		results, err = testsupport.DecodeJSON[schemas.Result](msgs)
		return err == nil && uint64(len(results)) == n && sim.RunsForPrompt("tick") == int(n)
	}, waitFor, 20*time.Millisecond, "one result and one run per firing")
	ids := map[string]bool{}
	for _, r := range results {
		assert.True(t, strings.HasPrefix(r.JobID, "tick:"), r.JobID)
		assert.False(t, ids[r.JobID], "one result for %s", r.JobID)
		ids[r.JobID] = true
		assert.Equal(t, schemas.StatusCompleted, r.Status)
		assert.Equal(t, map[string]string{"team": "sre", "jetpilot.schedule": "tick"}, r.Metadata)
	}
	res, err := client.WaitResult(ctx, results[0].JobID)
	require.NoError(t, err)
	assert.Equal(t, "tock", res.Stdout)

	out, code = run(t, "", "schedule", "ls", "--nats", url)
	require.Equal(t, 0, code, out)
	assert.NotContains(t, out, "tick")
}
