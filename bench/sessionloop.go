package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The full path's baseline: the agent-session loop a user of a plain job
// queue would write by hand with net/http and a line reader, with no queue
// at all. Each of Concurrency goroutines takes job ids and, per job:
//
//	POST /v1/sessions                   -> session id
//	GET  /v1/sessions/{id}/events       (SSE from event 0)
//	POST /v1/sessions/{id}/messages     -> run id
//	read the stream until that run's run_completed (collecting its text)
//
// with the same idempotency keys as the runner, against the same simulator
// and prompt as the full path. It is what ../shared/peers calls "bare
// HTTP+SSE loop": the ceiling of any worker on these two cores.

// sessionLoopClient is the hand-written client: one keep-alive transport
// for the calls; each event stream, which never ends by itself, is closed
// after its run (so its connection is not reused, as in a real loop).
type sessionLoopClient struct {
	base string
	hc   *http.Client
}

func newSessionLoopClient(base string, concurrency int) *sessionLoopClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        concurrency * 2,
		MaxIdleConnsPerHost: concurrency * 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &sessionLoopClient{base: strings.TrimSuffix(base, "/"), hc: &http.Client{Transport: tr}}
}

func (c *sessionLoopClient) close() { c.hc.CloseIdleConnections() }

// do sends a JSON request and decodes the JSON answer into out.
func (c *sessionLoopClient) do(ctx context.Context, method, path, idemKey string, body, out any, want int) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", method, path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Idempotency-Key", idemKey)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// session runs one job's session to its run_completed and returns the
// run's text.
func (c *sessionLoopClient) session(ctx context.Context, jobID, prompt string) (string, error) {
	var sess struct {
		ID string `json:"id"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/sessions", "jetpilot-"+jobID+"-session",
		map[string]any{"title": "bench session loop"}, &sess, http.StatusCreated); err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, c.base+"/v1/sessions/"+sess.ID+"/events", nil)
	if err != nil {
		return "", fmt.Errorf("open events: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "0")
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("open events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("open events: HTTP %d", resp.StatusCode)
	}
	var sent struct {
		RunID string `json:"run_id"`
	}
	body := map[string]any{"message": map[string]any{"role": "user", "content": prompt}, "type": "message"}
	if err := c.do(ctx, http.MethodPost, "/v1/sessions/"+sess.ID+"/messages", "jetpilot-"+jobID+"-run", body, &sent, http.StatusOK); err != nil {
		return "", fmt.Errorf("send message: %w", err)
	}
	return readLoopRun(bufio.NewReaderSize(resp.Body, 4096), sent.RunID)
}

// loopEnvelope is the data of an event frame: only what the loop uses.
type loopEnvelope struct {
	RunID *string `json:"run_id"`
	Event struct {
		TextDelta *struct {
			Delta string `json:"delta"`
		} `json:"TextDelta"`
		RunCompleted *struct{} `json:"RunCompleted"`
		RunError     *struct {
			Error string `json:"error"`
		} `json:"RunError"`
	} `json:"event"`
}

// readLoopRun reads SSE frames until runID's run_completed or run_error;
// frames of other kinds are skipped unread (no JSON decoding).
func readLoopRun(r *bufio.Reader, runID string) (string, error) {
	var text strings.Builder
	var event string
	var data []byte
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("event stream: line longer than 4 KiB")
		}
		if err != nil {
			return "", fmt.Errorf("event stream ended before run_completed: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) > 0 {
			if line[0] == ':' {
				continue
			}
			name, val, _ := bytes.Cut(line, []byte(":"))
			val = bytes.TrimPrefix(val, []byte(" "))
			switch string(name) {
			case "event":
				event = string(val)
			case "data":
				data = append(data, val...)
			}
			continue
		}
		ev, payload := event, data
		event, data = "", data[:0]
		switch ev {
		case "text_delta", "run_completed", "run_error":
		default:
			continue
		}
		var env loopEnvelope
		if err := json.Unmarshal(payload, &env); err != nil || env.RunID == nil || *env.RunID != runID {
			continue
		}
		switch {
		case env.Event.TextDelta != nil:
			text.WriteString(env.Event.TextDelta.Delta)
		case env.Event.RunCompleted != nil:
			return text.String(), nil
		case env.Event.RunError != nil:
			return "", fmt.Errorf("run_error: %s", env.Event.RunError.Error)
		}
	}
}

// sessionLoopRun measures one run of the bare loop: n jobs through
// concurrency goroutines, the clock from the first job taken to the n-th
// run_completed read. Every job must complete exactly once.
func sessionLoopRun(ctx context.Context, simURL, tag string, n, concurrency int, prompt string) (tpSample, error) {
	c := newSessionLoopClient(simURL, concurrency)
	defer c.close()
	jobs := make(chan string)
	var done, failed atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	seen := make(map[string]struct{}, n)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for id := range jobs {
				if _, err := c.session(ctx, id, prompt); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				mu.Lock()
				seen[id] = struct{}{}
				mu.Unlock()
				done.Add(1)
			}
		})
	}
	allocs := startAllocs()
	t0 := time.Now()
feed:
	for i := range n {
		select {
		case jobs <- jobID(tag, i):
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	t1 := time.Now()
	if err := ctx.Err(); err != nil {
		return tpSample{}, fmt.Errorf("session loop: %w", err)
	}
	if f := failed.Load(); f > 0 {
		return tpSample{}, fmt.Errorf("session loop: %d of %d sessions failed, the first with: %v", f, n, firstErr.Load())
	}
	a, b := allocs.perJob(n)
	return tpSample{
		jobsPerSec: float64(n) / t1.Sub(t0).Seconds(),
		allocs:     a, bytes: b, cpu: allocs.cpuPerJob(n),
		jobs: n, results: len(seen),
	}, nil
}
