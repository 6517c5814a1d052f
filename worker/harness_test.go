package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// waitFor bounds every wait in these tests; generous for -race on 2 cores.
const waitFor = 30 * time.Second

// harness is one real JetStream server, one agent simulator, and any number
// of workers between them.
type harness struct {
	t      *testing.T
	js     jetstream.JetStream
	qcfg   queue.Config
	sim    *agentsim.Server
	simURL string
	client *queue.Client
	n      atomic.Int32

	// runner configures the spawn runner of workers started later; tokenFile,
	// when set, is the agent client's token file.
	runner    spawn.RunnerOptions
	tokenFile string
}

func newHarness(t *testing.T, qcfg queue.Config) *harness {
	t.Helper()
	return newHarnessWith(t, qcfg, agentsim.Options{})
}

// newHarnessWith is newHarness with simulator options.
func newHarnessWith(t *testing.T, qcfg queue.Config, simOpts agentsim.Options) *harness {
	t.Helper()
	_, _, js := testnats.Start(t)
	sim, url := agentsimtest.New(t, simOpts)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	return &harness{t: t, js: js, qcfg: qcfg, sim: sim, simURL: url, client: queue.NewClient(js, qcfg)}
}

// runningWorker is a worker started by the harness.
type runningWorker struct {
	w    *worker.Worker
	name string
	stop context.CancelFunc
	done chan struct{} // closed when Run returns
	err  error
}

// Stop shuts the worker down gracefully and waits for Run to return.
func (r *runningWorker) Stop(t *testing.T) {
	t.Helper()
	r.stop()
	select {
	case <-r.done:
		require.NoError(t, r.err, "worker %s Run", r.name)
	case <-time.After(waitFor):
		t.Fatalf("worker %s did not stop within %s", r.name, waitFor)
	}
}

// startWorker runs a worker with a real spawn runner against the simulator.
// Small retry delays keep tests fast.
func (h *harness) startWorker(opts worker.Options) *runningWorker {
	h.t.Helper()
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("w%d", h.n.Add(1))
	}
	if opts.RetryInitial == 0 {
		opts.RetryInitial = 20 * time.Millisecond
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = 200 * time.Millisecond
	}
	if opts.FetchWait == 0 {
		opts.FetchWait = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(h.t)
	}
	if opts.Fallback == nil && opts.Policies == nil && len(opts.AllowedTools) == 0 {
		// Most tests are about the queue, not the policy: every call runs
		// unless the job narrows it (policy tests set their own).
		opts.Fallback = policy.Dev()
	}
	// The event-stream transport the worker ships with.
	client, err := spawn.NewClient(spawn.ClientOptions{BaseURL: h.simURL, TokenFile: h.tokenFile, DirectEventStreams: true})
	require.NoError(h.t, err)
	ropts := h.runner
	ropts.Worker, ropts.Logger = opts.Name, opts.Logger
	runner := spawn.NewRunner(client, ropts)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := worker.New(ctx, h.js, h.qcfg, runner, opts)
	require.NoError(h.t, err)
	rw := &runningWorker{w: w, name: opts.Name, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(rw.done)
		rw.err = w.Run(ctx)
	}()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-rw.done:
		case <-time.After(waitFor):
		}
	})
	return rw
}

func (h *harness) submit(job schemas.Job) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := h.client.Submit(ctx, job)
	require.NoError(h.t, err, "submit %s", job.ID)
}

// result waits for the job's next result after stream sequence after (0:
// its first), paused ones included.
func (h *harness) result(jobID string) schemas.Result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	res, _, err := h.client.WaitNext(ctx, jobID, 0)
	require.NoError(h.t, err, "wait for result of %s", jobID)
	return res
}

// final waits for the job's final result, skipping paused ones.
func (h *harness) final(jobID string) schemas.Result {
	h.t.Helper()
	res, err := h.tryFinal(jobID)
	require.NoError(h.t, err, "wait for final result of %s", jobID)
	return res
}

// tryFinal is final for another goroutine: it fails no test.
func (h *harness) tryFinal(jobID string) (schemas.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return h.client.WaitResult(ctx, jobID)
}

// tryAll reads every message on subject of stream ("" = all) as of now.
// It fails no test, so it is safe inside a wait condition.
func (h *harness) tryAll(stream, subject string) ([]jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return testsupport.ReadStream(ctx, h.js, stream, subject)
}

// tryDecodeAll decodes every message on subject of stream; like tryAll it
// fails no test.
func tryDecodeAll[T any](h *harness, stream, subject string) ([]T, error) {
	msgs, err := h.tryAll(stream, subject)
	if err != nil {
		return nil, err
	}
	return testsupport.DecodeJSON[T](msgs)
}

// decodeAll is tryDecodeAll on the test goroutine.
func decodeAll[T any](h *harness, stream, subject string) []T {
	h.t.Helper()
	out, err := tryDecodeAll[T](h, stream, subject)
	require.NoError(h.t, err)
	return out
}

// results decodes every result published for jobID.
func (h *harness) results(jobID string) []schemas.Result {
	return decodeAll[schemas.Result](h, h.qcfg.ResultsStream(), h.qcfg.ResultSubject(jobID))
}

// dead decodes every dead letter published for jobID.
func (h *harness) dead(jobID string) []schemas.DeadLetter {
	return decodeAll[schemas.DeadLetter](h, h.qcfg.DeadStream(), h.qcfg.DeadSubject(jobID))
}

// events decodes every live event published for jobID.
func (h *harness) events(jobID string) []schemas.Event {
	return decodeAll[schemas.Event](h, h.qcfg.EventsStream(), h.qcfg.EventSubject(jobID))
}

// tryEvents is events for a wait condition: it fails no test.
func (h *harness) tryEvents(jobID string) ([]schemas.Event, error) {
	return tryDecodeAll[schemas.Event](h, h.qcfg.EventsStream(), h.qcfg.EventSubject(jobID))
}

// eventually waits for cond with the harness deadline. cond runs on
// another goroutine: it must not call require or t.Fatal (use the try
// helpers, or eventuallyWithT).
func eventually(t *testing.T, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitFor, 10*time.Millisecond, fmt.Sprintf(msg, args...))
}

// eventuallyWithT waits until one run of check records no failure on c,
// with the harness deadline; the last run's failures are reported.
func eventuallyWithT(t *testing.T, check func(c *assert.CollectT), msg string, args ...any) {
	t.Helper()
	require.EventuallyWithT(t, check, waitFor, 10*time.Millisecond, fmt.Sprintf(msg, args...))
}

// testLogger keeps worker logs out of the test output unless -v.
func testLogger(t *testing.T) *slog.Logger { return testsupport.Logger(t, slog.LevelDebug) }

// countRequests counts the simulator's requests whose path ends with suffix.
func countRequests(h *harness, suffix string) int {
	n := 0
	for _, r := range h.sim.Requests() {
		if strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}

func job(id, prompt string) schemas.Job {
	return schemas.Job{ID: id, Prompt: prompt}
}
