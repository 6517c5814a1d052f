package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// latencySample is one run of the latency scenario.
type latencySample struct {
	achievedRate         float64
	publishToSession     []time.Duration
	runCompletedToResult []time.Duration
	publishToResult      []time.Duration
}

func (l *Latency) add(s latencySample) {
	l.AchievedRate.add(s.achievedRate)
	l.PublishToSession.add(s.publishToSession)
	l.RunCompletedToResult.add(s.runCompletedToResult)
	l.PublishToResult.add(s.publishToResult)
}

// latencyRun publishes jobs at a steady rate to one worker on the full path
// and measures, per job:
//   - publish -> session created: from just before the bench's publish call
//     to the simulator receiving POST /v1/sessions (RecordedRequest.At; the
//     request carries the job id in its Idempotency-Key). It spans the
//     JetStream store, the pull, decoding and validating the job, and the
//     HTTP request reaching the agent server.
//   - run_completed -> result stored: from the run_completed envelope's
//     timestamp (stamped by the simulator when it publishes the event,
//     before writing it on the SSE stream) to the result's timestamp in the
//     RESULTS stream (stamped by the NATS server when it stores it). It
//     spans the SSE write and read, the runner returning, building the
//     result and publishing it; not the KV update and the job ack after it.
//
// The simulator, the NATS server and the bench share one process and one
// clock, so the timestamps compare directly.
func (e *env) latencyRun(ctx context.Context, tag string, rate int, dur time.Duration, concurrency int) (latencySample, error) {
	s, err := startSim(ctx)
	if err != nil {
		return latencySample{}, err
	}
	defer s.stop()
	n := max(int(float64(rate)*dur.Seconds()), 1)
	cfg, cleanup, err := e.newQueue(ctx, tag, 0)
	if err != nil {
		return latencySample{}, err
	}
	defer cleanup()
	rw, err := watchResults(e.nc, cfg, n)
	if err != nil {
		return latencySample{}, err
	}
	defer rw.stop()
	stop, pullers, err := e.workersSide(1, concurrency, spawnRunner(s.url))(ctx, cfg)
	if err != nil {
		return latencySample{}, err
	}
	defer func() { _ = stop() }()
	if err := waitConsumerReady(ctx, e.js, cfg.JobsStream(), cfg.WorkersDurable(), pullers); err != nil {
		return latencySample{}, err
	}

	// Publish at a steady rate: job i is due at t0 + i/rate. A late tick
	// is not made up by a burst beyond the schedule.
	interval := time.Second / time.Duration(rate)
	pubAt := make(map[string]time.Time, n)
	futures := make([]jetstream.PubAckFuture, 0, n)
	t0 := time.Now()
	var last time.Time
	for i := range n {
		if d := time.Until(t0.Add(time.Duration(i) * interval)); d > 0 {
			if !sleepCtx(ctx, d) {
				return latencySample{}, fmt.Errorf("publish at %d jobs/s: %w", rate, ctx.Err())
			}
		}
		id := jobID(tag, i)
		last = time.Now()
		pubAt[id] = last
		f, err := publishJob(e.js, cfg, id, "benchmark job "+id)
		if err != nil {
			return latencySample{}, err
		}
		futures = append(futures, f)
	}
	out := latencySample{achievedRate: float64(n) / max(last.Sub(t0), interval).Seconds()}
	if n > 1 {
		out.achievedRate = float64(n-1) / last.Sub(t0).Seconds()
	}
	if err := waitAcks(ctx, futures); err != nil {
		return latencySample{}, err
	}
	if _, err := rw.wait(ctx); err != nil {
		return latencySample{}, err
	}

	// publish -> session created, from the simulator's request log.
	created := make(map[string]bool, n)
	for _, r := range s.Requests() {
		if r.Method != http.MethodPost || r.Path != "/v1/sessions" {
			continue
		}
		key := r.Header.Get("Idempotency-Key")
		id := strings.TrimSuffix(strings.TrimPrefix(key, "jetpilot-"), "-session")
		if at, ok := pubAt[id]; ok && !created[id] {
			created[id] = true // a retried create counts once
			out.publishToSession = append(out.publishToSession, r.At.Sub(at))
		}
	}
	// run_completed -> result stored, and publish -> result stored.
	stored, err := readResults(ctx, e.js, cfg, n)

	if err != nil {
		return latencySample{}, err
	}
	completed, err := runCompletedTimes(ctx, s.url, stored)
	if err != nil {
		return latencySample{}, err
	}
	for _, r := range stored {
		if at, ok := pubAt[r.jobID]; ok {
			out.publishToResult = append(out.publishToResult, r.at.Sub(at))
		}
		if c, ok := completed[r.sessionID]; ok {
			out.runCompletedToResult = append(out.runCompletedToResult, r.at.Sub(c))
		}
	}
	if len(out.publishToSession) != n || len(out.runCompletedToResult) != n || len(out.publishToResult) != n {
		return latencySample{}, fmt.Errorf("latency: measured %d/%d/%d of %d jobs (sessions, completions, results)",
			len(out.publishToSession), len(out.runCompletedToResult), len(out.publishToResult), n)
	}
	if err := stop(); err != nil {
		return latencySample{}, fmt.Errorf("stop worker: %w", err)
	}
	return out, nil
}

// storedResult is a result as the RESULTS stream holds it.
type storedResult struct {
	jobID, sessionID string
	at               time.Time // the stream's timestamp
}

// readResults reads the first n messages of the RESULTS stream.
func readResults(ctx context.Context, js jetstream.JetStream, cfg queue.Config, n int) ([]storedResult, error) {
	cons, err := js.OrderedConsumer(ctx, cfg.ResultsStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	out := make([]storedResult, 0, n)
	for len(out) < n {
		batch, err := cons.Fetch(min(n-len(out), 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read results: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read results: metadata: %w", err)
			}
			var r schemas.Result
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				return nil, fmt.Errorf("read results: decode: %w", err)
			}
			out = append(out, storedResult{jobID: r.JobID, sessionID: r.SessionID, at: meta.Timestamp})
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read results: %w", err)
		}
		if got == 0 {
			return nil, fmt.Errorf("read results: stream has %d of %d results", len(out), n)
		}
	}
	return out, nil
}

// runCompletedTimes replays each session's events from the start
// (Last-Event-ID 0) and returns the timestamp of its run_completed event.
func runCompletedTimes(ctx context.Context, url string, results []storedResult) (map[string]time.Time, error) {
	c, err := spawn.NewClient(spawn.ClientOptions{BaseURL: url, DirectEventStreams: true})
	if err != nil {
		return nil, fmt.Errorf("replay events: %w", err)
	}
	out := make(map[string]time.Time, len(results))
	var mu sync.Mutex
	var firstErr error
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for sid := range work {
				at, err := runCompletedAt(ctx, c, sid)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					out[sid] = at
				}
				mu.Unlock()
			}
		})
	}
	for _, r := range results {
		if r.sessionID == "" {
			continue
		}
		select {
		case work <- r.sessionID:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, ctx.Err()
}

func runCompletedAt(ctx context.Context, c *spawn.Client, sessionID string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var zero uint64
	st, err := c.Events(ctx, sessionID, &zero)
	if err != nil {
		return time.Time{}, fmt.Errorf("replay events of session %s: %w", sessionID, err)
	}
	defer st.Close()
	for range 10_000 {
		ev, err := st.Next()
		if err != nil {
			return time.Time{}, fmt.Errorf("replay events of session %s: %w", sessionID, err)
		}
		if ev.Name == spawn.EventRunCompleted {
			return ev.Time, nil
		}
	}
	return time.Time{}, fmt.Errorf("replay events of session %s: no run_completed in 10000 events", sessionID)
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
