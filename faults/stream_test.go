package faults

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// inProcess is a worker run in the test process against an embedded
// JetStream server, for faults that need runner options the binary does not
// expose (a short stall timeout, a small frame cap).
type inProcess struct {
	js     jetstream.JetStream
	client *queue.Client
	sim    *agentsim.Server
}

func startInProcess(t *testing.T, simOpts agentsim.Options, ropts spawn.RunnerOptions, wopts worker.Options) *inProcess {
	t.Helper()
	_, _, js := testnats.Start(t)
	sim, simURL := agentsimtest.New(t, simOpts)
	ctx := testsupport.Context(t, waitFor)
	qcfg := queue.Config{AckWait: 2 * time.Second}
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	log := testsupport.Logger(t, slog.LevelInfo)
	client, err := spawn.NewClient(spawn.ClientOptions{BaseURL: simURL})
	require.NoError(t, err)
	ropts.Worker, ropts.Logger = "inproc", log
	wopts.Name, wopts.Logger = "inproc", log
	if wopts.RetryInitial == 0 {
		wopts.RetryInitial, wopts.RetryMax = 50*time.Millisecond, 500*time.Millisecond
	}
	wopts.FetchWait = time.Second
	wctx, cancel := context.WithCancel(context.Background())
	w, err := worker.New(wctx, js, qcfg, spawn.NewRunner(client, ropts), wopts)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "worker Run")
		case <-time.After(waitFor):
			t.Error("worker did not stop")
		}
	})
	return &inProcess{js: js, client: queue.NewClient(js, qcfg), sim: sim}
}

// TestStreamFaults: event streams cut mid-run, garbage frames, a frame over
// the cap, a server that goes silent (no bytes, no keep-alive), a ring too
// small to replay, and a run error each end in the correct Result, and
// never in a hang or a second run.
func TestStreamFaults(t *testing.T) {
	const stall = time.Second
	copies := load(1, 10)
	started := time.Now()
	h := startInProcess(t, agentsim.Options{KeepAlive: time.Hour}, spawn.RunnerOptions{
		StallTimeout:  stall,
		MaxFrameBytes: 64 << 10,
	}, worker.Options{Concurrency: 16})

	type check func(t *testing.T, r schemas.Result)
	completed := func(want string) check {
		return func(t *testing.T, r schemas.Result) {
			assert.Equal(t, schemas.StatusCompleted, r.Status, "%+v", r.Error)
			assert.Equal(t, want, r.Stdout)
		}
	}
	warned := func(sub string) check {
		return func(t *testing.T, r schemas.Result) {
			assert.True(t, strings.Contains(strings.Join(r.Warnings, "\n"), sub), "warning %q in %q", sub, r.Warnings)
		}
	}
	cases := []struct {
		name   string
		prompt string
		job    func(*schemas.Job)
		checks []check
	}{
		{"stream dropped twice mid-run", "#sim drop-after 3\n#sim text hello world\n#sim sleep 200ms\n#sim text !",
			nil, []check{completed("hello world!")}},
		{"garbage frames", "#sim text before\n#sim garbage\n#sim text after",
			nil, []check{completed("beforeafter")}},
		{"frame over the cap", "#sim text before\n#sim bigframe 100000\n#sim text after",
			nil, []check{
				func(t *testing.T, r schemas.Result) {
					assert.Equal(t, schemas.StatusCompleted, r.Status, "%+v", r.Error)
					assert.True(t, strings.HasPrefix(r.Stdout, "beforex"), "text rebuilt from the session: %.40q", r.Stdout)
					assert.True(t, strings.HasSuffix(r.Stdout, "xafter"), "text rebuilt from the session: ...%q", r.Stdout[max(0, len(r.Stdout)-40):])
					assert.Greater(t, len(r.Stdout), 90000, "the skipped frame's text is back")
				},
				warned("skipped an event larger than"),
			}},
		{"server goes silent (no keep-alive)", "#sim stall-after 3\n#sim text hello\n#sim sleep 200ms\n#sim text there",
			nil, []check{completed("hellothere")}},
		{"silent and the run hangs: timed out", "#sim stall-after 2\n#sim text waiting\n#sim hang",
			func(j *schemas.Job) { j.Timeout = "3s" }, []check{func(t *testing.T, r schemas.Result) {
				assert.Equal(t, schemas.StatusTimedOut, r.Status)
				assert.NotEmpty(t, r.SessionID, "a timed-out result names its session")
			}}},
		{"dropped with a ring too small to replay", "#sim ring 3\n#sim drop-after 2\n#sim text one two three four five six\n#sim sleep 300ms\n#sim text seven",
			nil, []check{completed("one two three four five sixseven"), warned("a gap in the event stream")}},
		{"run error mid-stream", "#sim text partial\n#sim error model exploded",
			nil, []check{func(t *testing.T, r schemas.Result) {
				assert.Equal(t, schemas.StatusFailed, r.Status)
				assert.Contains(t, r.Stderr, "model exploded")
				assert.True(t, r.DeadLettered)
			}}},
	}
	ctx := testsupport.Context(t, 5*time.Minute)
	type sub struct {
		id    string
		check []check
		name  string
	}
	var subs []sub
	for c := range copies {
		for i, tc := range cases {
			id := fmt.Sprintf("stream-%d-%d", i, c)
			j := schemas.Job{ID: id, Prompt: fmt.Sprintf("case [%s]\n%s", id, tc.prompt)}
			if tc.job != nil {
				tc.job(&j)
			}
			_, err := h.client.Submit(ctx, j)
			require.NoError(t, err)
			subs = append(subs, sub{id, tc.checks, tc.name})
		}
	}
	f := figures{Jobs: len(subs), MinRuns: 1 << 30}
	for _, s := range subs {
		t.Run(s.id+" "+s.name, func(t *testing.T) {
			wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			r, err := h.client.WaitResult(wctx, s.id)
			if !assert.NoError(t, err, "a result, not a hang") {
				f.Lost++
				return
			}
			for _, c := range s.check {
				c(t, r)
			}
			runs := h.sim.RunsForPrompt("[" + s.id + "]")
			assert.Equal(t, 1, runs, "runs started")
			f.MinRuns, f.MaxRuns = min(f.MinRuns, runs), max(f.MaxRuns, runs)
		})
	}
	require.Eventually(t, func() bool { return testsupport.StreamLen(ctx, h.js, "JETPILOT_JOBS") == 0 }, waitFor, 20*time.Millisecond, "every job settled")
	msgs, err := testsupport.ReadStream(ctx, h.js, "JETPILOT_RESULTS", "")
	require.NoError(t, err)
	f.Duplicates = len(msgs) - len(subs)
	assert.Equal(t, len(subs), len(msgs), "one result per job")
	f.Scenario, f.Elapsed = "5. stream faults", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (%d of each of %d faults), 1 in-process worker x 16, stall timeout %s, frame cap 64 KiB", len(subs), copies, len(cases), stall)
	f.Faults = "stream cut twice, garbage frames, 100 KB frame, silent server, silent + hung run, gap after a cut, run_error"
	f.Command = "go test -race -run TestStreamFaults -v ./faults/"
	report(t, f)
}
