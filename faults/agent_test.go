package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// Faults of the agent server itself (AGENT_SERVER_API.md revision 2): a
// restart that kills the runs and changes the token, runs that die without
// an event, cancels the server only flags, decisions that land while a tool
// runs, and a decision whose answer is lost after the server applied it.

// agentEnv is one nats-server process, an in-process agent simulator and
// worker processes between them.
type agentEnv struct {
	ns      *natsServer
	sim     *agentsim.Server
	simURL  string
	js      jetstream.JetStream
	client  *queue.Client
	workers []*testsupport.Proc
	ctx     context.Context
}

func newAgentEnv(t *testing.T, simOpts agentsim.Options) *agentEnv {
	t.Helper()
	e := &agentEnv{ns: newNatsServer(t, natsConfig{})}
	e.sim, e.simURL = agentsimtest.New(t, simOpts)
	_, e.js = connect(t, e.ns.URL())
	e.ctx = testsupport.Context(t, 10*time.Minute)
	require.NoError(t, queue.Setup(e.ctx, e.js, queue.Config{AckWait: 2 * time.Second}))
	e.client = queue.NewClient(e.js, queue.Config{})
	return e
}

// startWorkers starts n worker processes x 8 with extra flags.
func (e *agentEnv) startWorkers(t *testing.T, n int, extra ...string) {
	t.Helper()
	for range n {
		e.workers = append(e.workers, startWorker(t, workerOpts{name: fmt.Sprintf("w%d", len(e.workers)+1), natsURL: e.ns.URL(), agentURL: e.simURL,
			extra: append([]string{"--concurrency", "8"}, extra...)}))
	}
}

func (e *agentEnv) submit(t *testing.T, jobs ...schemas.Job) {
	t.Helper()
	for _, j := range jobs {
		_, err := e.client.Submit(e.ctx, j)
		require.NoError(t, err, "submit %s", j.ID)
	}
}

// settle waits until every job was settled: JOBS empty (a work queue: a
// job leaves it when acked or terminated), the simulator runs nothing, and
// no job's latest result is a pause. The last matters for decided jobs: a
// paused job is off JOBS and has no run between its decision and its
// resumption, so JOBS and the simulator alone say "settled" too early.
func (e *agentEnv) settle(t *testing.T, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		return testsupport.StreamLen(e.ctx, e.js, "JETPILOT_JOBS") == 0 && e.sim.ActiveRuns() == 0 && e.pausedJobs() == 0
	}, within, 50*time.Millisecond, "every job settled (JOBS empty, no active run, no job paused)")
}

// pausedJobs is how many jobs' latest result on RESULTS is a pause, or -1
// while RESULTS cannot be read. It fails no test (a wait condition).
func (e *agentEnv) pausedJobs() int {
	msgs, err := testsupport.ReadStream(e.ctx, e.js, "JETPILOT_RESULTS", "")
	if err != nil {
		return -1
	}
	latest := map[string]schemas.Status{}
	for _, m := range msgs {
		var r schemas.Result
		if json.Unmarshal(m.Data(), &r) == nil {
			latest[r.JobID] = r.Status
		}
	}
	n := 0
	for _, s := range latest {
		if !s.Final() {
			n++
		}
	}
	return n
}

// finals returns every final result on RESULTS, by job.
func (e *agentEnv) finals(t *testing.T) map[string][]schemas.Result {
	t.Helper()
	var msgs []jetstream.Msg
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		msgs, err = testsupport.ReadStream(e.ctx, e.js, "JETPILOT_RESULTS", "")
		assert.NoError(c, err)
	}, waitFor, 100*time.Millisecond, "read results")
	out := map[string][]schemas.Result{}
	for _, m := range msgs {
		var r schemas.Result
		require.NoError(t, json.Unmarshal(m.Data(), &r), "result %s", m.Data())
		if r.Status.Final() {
			out[r.JobID] = append(out[r.JobID], r)
		}
	}
	return out
}

// dead returns every dead letter, by job.
func (e *agentEnv) dead(t *testing.T) map[string][]schemas.DeadLetter {
	t.Helper()
	msgs, err := testsupport.ReadStream(e.ctx, e.js, "JETPILOT_DEAD", "")
	require.NoError(t, err)
	out := map[string][]schemas.DeadLetter{}
	for _, m := range msgs {
		var d schemas.DeadLetter
		require.NoError(t, json.Unmarshal(m.Data(), &d))
		out[d.JobID] = append(out[d.JobID], d)
	}
	return out
}

// logCount counts a log message in every worker's output.
func (e *agentEnv) logCount(msg string) int {
	n := 0
	for _, w := range e.workers {
		n += strings.Count(w.Output(), msg)
	}
	return n
}

// count checks the invariants every scenario shares, over ids: exactly one
// final result (none = lost, more = duplicates) and exactly one agent run
// (prompts carry "[id]"). It returns each job's final result and the
// figures; a job's expected outcome is the caller's to check.
func (e *agentEnv) count(t *testing.T, ids []string) (map[string]schemas.Result, figures) {
	t.Helper()
	byJob := e.finals(t)
	f := figures{Jobs: len(ids), MinRuns: 1 << 30}
	out := map[string]schemas.Result{}
	for _, id := range ids {
		rs := byJob[id]
		switch {
		case len(rs) == 0:
			f.Lost++
			t.Errorf("job %s: no final result", id)
		case len(rs) > 1:
			f.Duplicates += len(rs) - 1
			t.Errorf("job %s: %d final results", id, len(rs))
		}
		if len(rs) > 0 {
			out[id] = rs[0]
			if rs[0].Attempt > 1 {
				f.Reattached++
			}
		}
		runs := e.sim.RunsForPrompt("[" + id + "]")
		assert.Equal(t, 1, runs, "job %s: agent runs started", id)
		f.MinRuns, f.MaxRuns = min(f.MinRuns, runs), max(f.MaxRuns, runs)
	}
	assert.Len(t, byJob, len(ids), "no result for a job nobody submitted")
	assert.Equal(t, len(ids), e.sim.RunsStarted(), "runs started in all")
	return out, f
}

// isRunLost reports a failed/run_lost result.
func isRunLost(r schemas.Result) bool {
	return r.Status == schemas.StatusFailed && r.Error != nil && r.Error.Code == spawn.CodeRunLost
}

// within reports whether r was finished no later than bound after from.
func within(r schemas.Result, from time.Time, bound time.Duration) bool {
	return !r.FinishedAt.IsZero() && r.FinishedAt.Sub(from) <= bound
}

// TestAgentServerRestart: the agent server restarts mid-load (its runs die
// without an event, its event streams are cut, and it has a new token),
// with jobs running and more queued. The workers see 401s and stop pulling;
// a few seconds later the new token reaches their token file. Every job in
// flight at the restart ends failed/run_lost, never completed and never run
// a second time; every other job completes; nothing is dead-lettered for
// the 401s.
func TestAgentServerRestart(t *testing.T) {
	long := load(6, 10) // runs that cannot finish before the restart
	n := load(30, 120)  // short jobs, running or queued at the restart
	const minOutage = 3 * time.Second
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{Token: "token-before"})
	tokenFile := filepath.Join(t.TempDir(), "agent-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("token-before\n"), 0o600))
	// 2 x 16 slots: some are free at the restart, so jobs submitted right
	// after it are pulled before the workers notice, and their starts meet
	// the 401s.
	e.startWorkers(t, 2, "--agent-token-file", tokenFile, "--concurrency", "16")
	afterN := load(8, 20)

	var longIDs, ids []string
	for i := range long {
		id := fmt.Sprintf("arestart-long-%02d", i)
		longIDs = append(longIDs, id)
		e.submit(t, schemas.Job{ID: id, Prompt: fmt.Sprintf("long job [%s]\n#sim text a-%s\n#sim sleep 10m\n#sim text -z", id, id), Timeout: "5m"})
	}
	require.Eventually(t, func() bool { return e.sim.ActiveRuns() >= long }, waitFor, 5*time.Millisecond, "the long runs are going")
	jobs := makeJobs("arestart", n, 1500*time.Millisecond)
	submitAll(e.ctx, t, e.client, jobs)
	want := map[string]string{}
	for _, j := range jobs {
		ids = append(ids, j.id)
		want[j.id] = j.want
	}
	// Near the end of the short jobs, so slots are free at the restart
	// (at most 16 short and the long ones are left for 32 slots).
	waitResults(e.ctx, t, e.js, n-16, 3*time.Minute)
	require.Eventually(t, func() bool { return e.sim.ActiveRuns() >= long+2 }, waitFor, 5*time.Millisecond, "short runs in flight too")
	after := makeJobs("arestart-after", afterN, 500*time.Millisecond)

	const gated = "agent server unavailable: not taking jobs"
	gatedBefore := make([]int, len(e.workers))
	for i, w := range e.workers {
		gatedBefore[i] = strings.Count(w.Output(), gated)
	}
	e.sim.Restart("token-after")
	restartAt := time.Now()
	// Runs started so far started before the restart (a run needs the new
	// token, which no worker has yet): only these may be lost.
	startedBefore := map[string]bool{}
	for _, id := range ids {
		startedBefore[id] = e.sim.RunsForPrompt("["+id+"]") > 0
	}
	submitAll(e.ctx, t, e.client, after)
	for _, j := range after {
		want[j.id] = j.want
	}
	// The outage lasts until every worker has noticed the refused token
	// (its readiness check closes its gate), and at least minOutage.
	require.Eventually(t, func() bool {
		for i, w := range e.workers {
			if strings.Count(w.Output(), gated) == gatedBefore[i] {
				return false
			}
		}
		return true
	}, waitFor, 20*time.Millisecond, "every worker stops pulling jobs")
	if left := minOutage - time.Since(restartAt); left > 0 {
		downFor(t, left)
	}
	require.NoError(t, os.WriteFile(tokenFile, []byte("token-after\n"), 0o600))
	tokenAt := time.Now()

	e.settle(t, 5*time.Minute)
	all := append(append([]string{}, longIDs...), ids...)
	for _, j := range after {
		all = append(all, j.id)
	}
	res, f := e.count(t, all)
	const bound = time.Minute // after the new token, every job has its result
	lost, shortLost := 0, 0
	for _, id := range all {
		r, ok := res[id]
		if !ok || !within(r, tokenAt, bound) {
			f.Hung++
		}
		if !ok {
			continue
		}
		if isRunLost(r) {
			lost++
		}
		switch {
		case slices.Contains(longIDs, id):
			assert.True(t, isRunLost(r), "job %s was running at the restart: want failed/run_lost, got %s %+v", id, r.Status, r.Error)
		case isRunLost(r):
			shortLost++
			assert.True(t, startedBefore[id], "job %s: run_lost, but its run started after the restart", id)
		default:
			if assert.Equal(t, schemas.StatusCompleted, r.Status, "job %s: %+v", id, r.Error) {
				assert.Equal(t, want[id], r.Stdout, "job %s stdout", id)
			}
		}
	}
	for id, dls := range e.dead(t) {
		for _, d := range dls {
			assert.Equal(t, spawn.CodeRunLost, d.Reason, "job %s dead-lettered for %q (%s): only lost runs may be", id, d.Reason, d.Error)
		}
	}
	f.Scenario, f.Elapsed = "8. agent server restart", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs: %d running 10 min, %d short (0-1.5s, tools) running or queued, %d submitted just after the restart; 2 worker processes x 16, --agent-token-file", len(all), long, n, afterN)
	f.Faults = fmt.Sprintf("agent server restarted (runs killed without an event, streams cut, new token); new token in the file %s later; %d in flight ended failed/run_lost (%d long + %d short), the other %d completed; %d start attempts refused (401) and retried, dead letters only for run_lost",
		tokenAt.Sub(restartAt).Round(100*time.Millisecond), lost, lost-shortLost, shortLost, len(all)-lost, e.logCount("agent server unavailable; retrying"))
	f.Command = "go test -race -run TestAgentServerRestart -v ./faults/"
	report(t, f)
	assert.Equal(t, 0, f.Hung, "hung jobs")
}

// TestSilentRunDeaths: a quarter of a load's runs die without any event
// (a sandbox, checkpoint or hook failure on the real server: the session
// reads failed, the stream carries keep-alives forever), some before
// run_started. The workers' liveness probe (--liveness-interval 1s) ends
// each failed/run_lost within the bound; the rest (long inferences with no
// event for longer than the probe interval among them) complete.
func TestSilentRunDeaths(t *testing.T) {
	n := load(32, 120)
	const liveness = time.Second
	bound := liveness + 10*time.Second // probe, request and settling under -race
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{KeepAlive: 200 * time.Millisecond})
	e.startWorkers(t, 2, "--liveness-interval", liveness.String())

	type dj struct {
		id, want string
		dies     bool
		atStart  bool          // dies before run_started
		sleep    time.Duration // before the death
	}
	var djs []dj
	var ids []string
	for i, j := range makeJobs("silent", n, 2*time.Second) {
		d := dj{id: j.id, want: j.want}
		switch i % 8 {
		case 1, 5: // dies mid-run, after text and an inference
			d.dies, d.sleep = true, time.Duration(i%3)*500*time.Millisecond
			j.prompt = fmt.Sprintf("dying job [%s]\n#sim text a-%s\n#sim sleep %s\n#sim die", j.id, j.id, d.sleep)
		case 3: // dies at start-up, before run_started
			d.dies, d.atStart = true, true
			j.prompt = fmt.Sprintf("dying job [%s]\n#sim die", j.id)
		}
		djs = append(djs, d)
		ids = append(ids, j.id)
		e.submit(t, schemas.Job{ID: j.id, Prompt: j.prompt, Timeout: "5m"})
	}
	e.settle(t, 5*time.Minute)
	res, f := e.count(t, ids)
	died, atStart := 0, 0
	var slowest time.Duration // death to result, at most (from the phase start, less the inference before the death)
	for _, d := range djs {
		r, ok := res[d.id]
		if !ok {
			f.Hung++
			continue
		}
		if !d.dies {
			if assert.Equal(t, schemas.StatusCompleted, r.Status, "job %s: %+v", d.id, r.Error) {
				assert.Equal(t, d.want, r.Stdout, "job %s stdout", d.id)
			}
			continue
		}
		died++
		if d.atStart {
			atStart++
		}
		assert.True(t, isRunLost(r), "job %s died silently: want failed/run_lost, got %s %+v", d.id, r.Status, r.Error)
		slowest = max(slowest, r.FinishedAt.Sub(r.StartedAt)-d.sleep)
		if !within(r, r.StartedAt, d.sleep+bound) {
			f.Hung++
			t.Errorf("job %s: its silent death was reported %s after the phase started (bound %s)", d.id, r.FinishedAt.Sub(r.StartedAt), d.sleep+bound)
		}
	}
	f.Scenario, f.Elapsed = "9. silent run deaths", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (0-2s, tools; %d die), 2 worker processes x 8, --liveness-interval %s, keep-alives every 200ms", n, died, liveness)
	f.Faults = fmt.Sprintf("%d runs die without an event (%d mid-run, %d at start-up): all failed/run_lost, at most %s after the death (bound %s); %d others completed", died, died-atStart, atStart, slowest.Round(100*time.Millisecond), bound, n-died)
	f.Command = "go test -race -run TestSilentRunDeaths -v ./faults/"
	report(t, f)
	assert.Equal(t, 0, f.Hung, "hung jobs")
}

// waitEvents waits until every job of ids has a live event of type typ on
// EVENTS, calling seen(id) once for each as soon as its event is there.
func (e *agentEnv) waitEvents(t *testing.T, ids []string, typ schemas.EventType, seen func(id string)) {
	t.Helper()
	done := map[string]bool{}
	deadline := time.Now().Add(waitFor)
	for len(done) < len(ids) {
		require.True(t, time.Now().Before(deadline), "%s events of %d jobs: %d seen", typ, len(ids), len(done))
		msgs, err := testsupport.ReadStream(e.ctx, e.js, "JETPILOT_EVENTS", "")
		if err != nil {
			continue // NATS is up in these scenarios; readStream bounds itself
		}
		for _, m := range msgs {
			var ev schemas.Event
			if json.Unmarshal(m.Data(), &ev) != nil || ev.Type != typ || done[ev.JobID] || !slices.Contains(ids, ev.JobID) {
				continue
			}
			done[ev.JobID] = true
			seen(ev.JobID)
		}
	}
}

// TestCancelPausedAndThinkingRuns: cancels of runs the server's cancel flag
// alone would not end: runs paused for approval (cancelled with `jetpilot
// cancel`), and runs in a model inference (`#sim sleep`, which cancel does
// not interrupt; cancelled with a core NATS request) that then propose a
// tool or answer without one, the inference shorter or longer than the
// workers' --cancel-grace. Every cancelled job gets exactly one final
// result within the grace bound: cancelled, or completed for an answer
// without tool calls (AGENT_SERVER_API.md "Cancel"). None hangs.
func TestCancelPausedAndThinkingRuns(t *testing.T) {
	copies := load(2, 10)
	const grace = 3 * time.Second
	bound := grace + 7*time.Second // the grace, the cancel's round trips and settling under -race
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{})
	e.startWorkers(t, 2, "--cancel-grace", grace.String())

	type kind struct {
		name, script string
		paused       bool
		mayComplete  bool // an answer without tool calls may finish the run
	}
	kinds := []kind{
		{"paused", "#sim text a\n#sim tool stakpak__run_command {\"command\":\"make deploy\"}\n#sim text never", true, false},
		{"think-tool", "#sim sleep 2s\n#sim text proposing\n#sim tool stakpak__view {}\n#sim text never", false, false},
		{"think-answer", "#sim sleep 2s\n#sim text answered", false, true},
		{"think-long-tool", "#sim sleep 6s\n#sim text proposing\n#sim tool stakpak__view {}\n#sim text never", false, false},
		{"think-long-answer", "#sim sleep 6s\n#sim text answered", false, true},
	}
	type cj struct {
		id string
		k  kind
	}
	var cjs []cj
	var ids, paused, thinking []string
	kindOf := map[string]kind{}
	for c := range copies {
		for _, k := range kinds {
			id := fmt.Sprintf("cancel-%s-%d", k.name, c)
			j := schemas.Job{ID: id, Prompt: fmt.Sprintf("cancel job [%s]\n%s", id, k.script), Timeout: "5m", PauseOnApproval: k.paused}
			if k.paused {
				j.AllowedTools = []string{"view"}
				paused = append(paused, id)
			} else {
				thinking = append(thinking, id)
			}
			cjs = append(cjs, cj{id, k})
			ids = append(ids, id)
			kindOf[id] = k
			e.submit(t, j)
		}
	}

	cancelAt := map[string]time.Time{}
	// The thinking runs: cancel each as soon as its first turn started,
	// which is when its inference (the sleep) begins.
	e.waitEvents(t, thinking, schemas.EventTurnStarted, func(id string) {
		cctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		cancelAt[id] = time.Now()
		reply, err := e.client.Cancel(cctx, id)
		if assert.NoError(t, err, "cancel %s", id) {
			// The first answer wins: the holder's "cancelling", or another
			// worker's "cancel_requested" (recorded for the holder).
			assert.Regexp(t, `"outcome":"(cancelling|cancel_requested)"`, string(reply), "cancel %s", id)
		}
	})
	// The paused runs: cancel each with the CLI once its pause is out.
	for _, id := range paused {
		wctx, cancel := context.WithTimeout(e.ctx, waitFor)
		r, _, err := e.client.WaitNext(wctx, id, 0)
		cancel()
		require.NoError(t, err, "pause of %s", id)
		require.Equal(t, schemas.StatusPaused, r.Status, "job %s", id)
		cancelAt[id] = time.Now()
		p := testsupport.StartProc(t, "jetpilot cancel "+id, nil, jpBin, "cancel", id, "--nats", e.ns.URL())
		assert.Equal(t, 0, p.ExitCode(t, waitFor), "jetpilot cancel %s: %s", id, p.Output())
	}

	e.settle(t, 5*time.Minute)
	res, f := e.count(t, ids)
	statuses := map[schemas.Status]int{}
	var slowest time.Duration // cancel to final result, at most
	unconfirmed := 0
	for _, c := range cjs {
		r, ok := res[c.id]
		if !ok {
			f.Hung++
			continue
		}
		statuses[r.Status]++
		slowest = max(slowest, r.FinishedAt.Sub(cancelAt[c.id]))
		if !within(r, cancelAt[c.id], bound) {
			f.Hung++
			t.Errorf("job %s: final result %s after the cancel (bound %s)", c.id, r.FinishedAt.Sub(cancelAt[c.id]), bound)
		}
		if strings.Contains(strings.Join(r.Warnings, "\n"), "confirm") {
			unconfirmed++
		}
		if c.k.mayComplete && r.Status == schemas.StatusCompleted {
			continue
		}
		assert.Equal(t, schemas.StatusCancelled, r.Status, "job %s (%s): %+v %v", c.id, c.k.name, r.Error, r.Warnings)
	}
	f.Scenario, f.Elapsed = "10. cancel paused and thinking runs", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (%d of each of %d kinds), 2 worker processes x 8, --cancel-grace %s", len(ids), copies, len(kinds), grace)
	f.Faults = fmt.Sprintf("cancel runs paused for approval (`jetpilot cancel`) and in a 2s or 6s inference cancel does not interrupt, then a tool or an answer (NATS request): %d cancelled, %d completed (answer without tools), %d of them unconfirmed after the grace; results at most %s after the cancel (bound %s)",
		statuses[schemas.StatusCancelled], statuses[schemas.StatusCompleted], unconfirmed, slowest.Round(100*time.Millisecond), bound)
	f.Command = "go test -race -run TestCancelPausedAndThinkingRuns -v ./faults/"
	report(t, f)
	assert.Equal(t, 0, f.Hung, "hung jobs")
}

// approvals follows APPROVALS and hands every request on the channel until
// ctx is done. The reader runs on its own goroutine and only sends.
func (e *agentEnv) approvals(ctx context.Context) <-chan schemas.ApprovalRequest {
	ch := make(chan schemas.ApprovalRequest, 256)
	go func() {
		_ = e.client.Approvals(ctx, true, func(a schemas.ApprovalRequest) error {
			select {
			case ch <- a:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return ch
}

// decideAll allows every approval request of ids as soon as it appears and
// returns when it was decided, by job.
func (e *agentEnv) decideAll(t *testing.T, ids []string) map[string]time.Time {
	t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	ch := e.approvals(ctx)
	decided := map[string]time.Time{}
	deadline := time.After(waitFor)
	for len(decided) < len(ids) {
		select {
		case a := <-ch:
			if _, dup := decided[a.JobID]; dup || !slices.Contains(ids, a.JobID) {
				continue
			}
			decided[a.JobID] = time.Now()
			require.NoError(t, e.client.Decide(e.ctx, schemas.Decision{ApprovalID: a.ApprovalID, JobID: a.JobID, All: schemas.DecideAllow, DecidedBy: "faults"}), "decide %s", a.JobID)
		case <-deadline:
			require.FailNow(t, "approval requests missing", "%d of %d decided", len(decided), len(ids))
		}
	}
	return decided
}

// decisionRequests counts the decision requests the simulator received per
// session, and those answered with a connection reset.
func decisionRequests(sim *agentsim.Server) (all, reset map[string]int, firstReset map[string]bool) {
	all, reset, firstReset = map[string]int{}, map[string]int{}, map[string]bool{}
	for _, r := range sim.Requests() {
		rest, ok := strings.CutPrefix(r.Path, "/v1/sessions/")
		if !ok || r.Method != "POST" || !strings.Contains(rest, "/tools/") {
			continue
		}
		sid, _, _ := strings.Cut(rest, "/")
		if all[sid] == 0 && r.Status == 0 {
			firstReset[sid] = true
		}
		all[sid]++
		if r.Status == 0 {
			reset[sid]++
		}
	}
	return all, reset, firstReset
}

// TestApprovalWhileAcceptedToolRuns: pause_on_approval jobs whose proposal
// holds an allowed tool that runs for a while (`#sim tool-time`) and a tool
// that needs a human, who allows it as soon as the approval request is out.
// The policy's verdict is held and sent with the human's in one request, so
// nothing lands while a call of the batch executes (where the server would
// park it and the run wait forever). Every job completes, with both calls
// run, one decision request and one run.
func TestApprovalWhileAcceptedToolRuns(t *testing.T) {
	n := load(12, 60)
	const toolTime = time.Second
	const bound = 30 * time.Second // before the fix: until the job's timeout
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{})
	e.startWorkers(t, 2)
	var ids []string
	for i := range n {
		id := fmt.Sprintf("approve-%03d", i)
		ids = append(ids, id)
		e.submit(t, schemas.Job{ID: id, Timeout: "2m", PauseOnApproval: true, AllowedTools: []string{"view"},
			Prompt: fmt.Sprintf("approval job [%s]\n#sim text a-%s\n#sim tool-time %s\n#sim tool stakpak__view {}\n#sim tool stakpak__run_command {\"command\":\"make deploy\"}\n#sim text -z", id, id, toolTime)})
	}
	decided := e.decideAll(t, ids)
	e.settle(t, 5*time.Minute)
	res, f := e.count(t, ids)
	perSession, _, _ := decisionRequests(e.sim)
	var slowest time.Duration // decision to final result, at most
	for _, id := range ids {
		r, ok := res[id]
		if !ok || !within(r, decided[id], bound) {
			f.Hung++
		}
		if !ok {
			continue
		}
		slowest = max(slowest, r.FinishedAt.Sub(decided[id]))
		if assert.Equal(t, schemas.StatusCompleted, r.Status, "job %s: %+v %v", id, r.Error, r.Warnings) {
			assert.Equal(t, "a-"+id+"-z", r.Stdout, "job %s stdout", id)
			assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, r.ToolCalls, "job %s", id)
		}
		assert.Equal(t, 1, perSession[r.SessionID], "job %s: one decision request for the batch", id)
	}
	f.Scenario, f.Elapsed = "11. approval while an accepted tool runs", time.Since(started)
	f.Load = fmt.Sprintf("%d pause_on_approval jobs, 2 worker processes x 8", n)
	f.Faults = fmt.Sprintf("each proposal: an allowed tool running %s and a tool needing a human, allowed as soon as the request appears: all completed, at most %s after the decision (bound %s; before the fix they hung until their timeout), one decision request each", toolTime, slowest.Round(100*time.Millisecond), bound)
	f.Command = "go test -race -run TestApprovalWhileAcceptedToolRuns -v ./faults/"
	report(t, f)
	assert.Equal(t, 0, f.Hung, "hung jobs")
}

// TestDecisionAnswerLost: the agent server applies a decision request and
// the connection is reset before its answer (agentsim fault
// "reset-after"), for decisions the policy sends on its own and for those
// that carry a human's answer. The retry carries the same Idempotency-Key,
// so the server replays its stored 200 instead of taking the decisions a
// second time (which would kill the run without an event). Every job
// completes with one run.
func TestDecisionAnswerLost(t *testing.T) {
	n := load(12, 60)
	const bound = 30 * time.Second
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{})
	e.startWorkers(t, 2)
	// Every decision request of the scenario, the first of each job and
	// its retries alike, is applied and then loses its answer, until n of
	// them have.
	e.sim.InjectFault(agentsim.Fault{Route: agentsim.RouteDecisions, Kind: agentsim.FaultResetAfter, Count: n})
	var ids, human []string
	submitted := map[string]time.Time{}
	for i := range n {
		id := fmt.Sprintf("lostanswer-%03d", i)
		ids = append(ids, id)
		j := schemas.Job{ID: id, Timeout: "2m",
			Prompt: fmt.Sprintf("decision job [%s]\n#sim text a-%s\n#sim tool stakpak__view {}\n#sim text -z", id, id)}
		if i%2 == 1 {
			human = append(human, id)
			j.PauseOnApproval, j.AllowedTools = true, []string{"view"}
			j.Prompt = fmt.Sprintf("decision job [%s]\n#sim text a-%s\n#sim tool stakpak__view {}\n#sim tool stakpak__run_command {}\n#sim text -z", id, id)
		}
		submitted[id] = time.Now()
		e.submit(t, j)
	}
	decided := e.decideAll(t, human)
	e.settle(t, 5*time.Minute)
	res, f := e.count(t, ids)
	all, reset, firstReset := decisionRequests(e.sim)
	hit := 0
	for _, id := range ids {
		r, ok := res[id]
		from, isHuman := decided[id]
		if !isHuman {
			from = submitted[id]
		}
		if !ok || !within(r, from, bound) {
			f.Hung++
		}
		if !ok {
			continue
		}
		if assert.Equal(t, schemas.StatusCompleted, r.Status, "job %s: %+v %v", id, r.Error, r.Warnings) {
			assert.Equal(t, "a-"+id+"-z", r.Stdout, "job %s stdout", id)
			calls := 1
			if isHuman {
				calls = 2
			}
			assert.Equal(t, schemas.ToolCallCounts{Accepted: calls}, r.ToolCalls, "job %s", id)
		}
		if firstReset[r.SessionID] {
			hit++
		}
		ds := e.sim.Decisions(r.SessionID)
		if assert.Len(t, ds, 1, "job %s: decisions of one run", id) {
			for call, d := range ds[0] {
				assert.Equal(t, "accept", d.Action, "job %s call %s", id, call)
			}
		}
	}
	resets, requests := 0, 0
	for sid, k := range all {
		requests += k
		resets += reset[sid]
	}
	require.Positive(t, hit, "some jobs' first decision request was applied and its answer lost")
	f.Scenario, f.Elapsed = "12. decision answer lost", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs with one tool proposal (%d decided by the policy, %d by a human), 2 worker processes x 8", n, n-len(human), len(human))
	f.Faults = fmt.Sprintf("connection reset after the server applied a decision request: %d of %d decision requests, the first of %d jobs; retries replayed the stored 200, no run died", resets, requests, hit)
	f.Command = "go test -race -run TestDecisionAnswerLost -v ./faults/"
	report(t, f)
	assert.Equal(t, 0, f.Hung, "hung jobs")
}
