package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
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
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	res, err := h.client.WaitResult(ctx, jobID)
	require.NoError(h.t, err, "wait for final result of %s", jobID)
	return res
}

// all reads every message on subject (a stream's whole content for it).
func (h *harness) all(stream, subject string) []jetstream.RawStreamMsg {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := h.js.Stream(ctx, stream)
	require.NoError(h.t, err)
	info, err := s.Info(ctx)
	require.NoError(h.t, err)
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(h.t, err)
		if subject == "" || m.Subject == subject {
			out = append(out, *m)
		}
	}
	return out
}

// decodeAll decodes every message on subject of stream.
func decodeAll[T any](h *harness, stream, subject string) []T {
	h.t.Helper()
	var out []T
	for _, m := range h.all(stream, subject) {
		var v T
		require.NoError(h.t, json.Unmarshal(m.Data, &v))
		out = append(out, v)
	}
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

// eventually waits for cond with the harness deadline.
func eventually(t *testing.T, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitFor, 10*time.Millisecond, fmt.Sprintf(msg, args...))
}

// testLogger keeps worker logs out of the test output unless -v.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

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
