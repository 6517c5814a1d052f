package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// loadJob is one job of a load, with the text its result must carry.
type loadJob struct {
	id, prompt, want string
}

// makeJobs builds n jobs of varying length (sleeps up to maxSleep, some with
// a tool call, a retry or a compaction) whose prompts name their id, so the
// simulator can say how many runs each one got.
func makeJobs(prefix string, n int, maxSleep time.Duration) []loadJob {
	jobs := make([]loadJob, n)
	for i := range jobs {
		id := fmt.Sprintf("%s-%04d", prefix, i)
		sleep := time.Duration(i%7) * maxSleep / 6
		extra := ""
		switch i % 5 {
		case 0:
			extra = "#sim tool stakpak__view {\"path\":\"README.md\"}\n"
		case 1:
			extra = "#sim compaction\n"
		case 2:
			extra = "#sim retry\n"
		}
		jobs[i] = loadJob{
			id: id,
			prompt: fmt.Sprintf("fault job [%s]\n#sim text a-%s\n#sim sleep %s\n%s#sim text -z\n#sim usage 10 5",
				id, id, sleep, extra),
			want: "a-" + id + "-z",
		}
	}
	return jobs
}

// submitAll publishes the jobs, retrying each while NATS is unavailable.
func submitAll(ctx context.Context, t *testing.T, client *queue.Client, jobs []loadJob) {
	t.Helper()
	for _, j := range jobs {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := client.Submit(sctx, schemas.Job{ID: j.id, Prompt: j.prompt, Timeout: "5m"})
			assert.NoError(c, err)
		}, waitFor, 50*time.Millisecond, "submit %s", j.id)
	}
}

// waitResults waits until RESULTS holds at least n messages.
func waitResults(ctx context.Context, t *testing.T, js jetstream.JetStream, n int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		return testsupport.StreamLen(ctx, js, "JETPILOT_RESULTS") >= n
	}, within, 50*time.Millisecond, "%d results", n)
}

// settleAndCount waits until every job has been settled (the work-queue
// JOBS stream is empty and the simulator runs nothing), then counts what
// each job got: final results, and runs the simulator started.
func settleAndCount(ctx context.Context, t *testing.T, js jetstream.JetStream, sim *agentsim.Server, jobs []loadJob, within time.Duration) figures {
	t.Helper()
	require.Eventually(t, func() bool {
		return testsupport.StreamLen(ctx, js, "JETPILOT_JOBS") == 0 && sim.ActiveRuns() == 0
	}, within, 50*time.Millisecond, "every job settled (JOBS empty, no active run)")

	var msgs []jetstream.Msg
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		msgs, err = testsupport.ReadStream(ctx, js, "JETPILOT_RESULTS", "")
		assert.NoError(c, err)
	}, waitFor, 100*time.Millisecond, "read results")
	byJob := map[string][]schemas.Result{}
	for _, m := range msgs {
		var r schemas.Result
		require.NoError(t, json.Unmarshal(m.Data(), &r), "result %s", m.Data())
		if r.Status.Final() {
			byJob[r.JobID] = append(byJob[r.JobID], r)
		}
	}
	f := figures{Jobs: len(jobs), MinRuns: 1 << 30}
	for _, j := range jobs {
		rs := byJob[j.id]
		switch {
		case len(rs) == 0:
			f.Lost++
			t.Errorf("job %s: no final result", j.id)
			continue
		case len(rs) > 1:
			f.Duplicates += len(rs) - 1
			t.Errorf("job %s: %d final results", j.id, len(rs))
		}
		r := rs[0]
		if assert.Equal(t, schemas.StatusCompleted, r.Status, "job %s: %+v", j.id, r.Error) {
			assert.Equal(t, j.want, r.Stdout, "job %s stdout", j.id)
		}
		if r.Attempt > 1 {
			f.Reattached++
		}
		runs := sim.RunsForPrompt("[" + j.id + "]")
		assert.Equal(t, 1, runs, "job %s: agent runs started", j.id)
		f.MinRuns, f.MaxRuns = min(f.MinRuns, runs), max(f.MaxRuns, runs)
	}
	// The bound of these scenarios is the settle wait: a job without a
	// final result by then is both hung and lost.
	f.Hung = f.Lost
	assert.Len(t, byJob, len(jobs), "no result for a job nobody submitted")
	assert.Equal(t, len(jobs), sim.RunsStarted(), "runs started in all")
	return f
}
