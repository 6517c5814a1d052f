package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// concSample is one run of the concurrency scenario.
type concSample struct {
	before, after  procStats
	end            procStats // at the end of the idle window
	idleCPUPercent float64
	ramp           time.Duration
	n              int
}

func (c *Concurrency) add(s concSample) {
	n := float64(s.n)
	c.RSSPerRunKiB.add(float64(s.after.RSSKiB-s.before.RSSKiB) / n)
	c.GoroutinesPerRun.add(float64(s.after.Goroutines-s.before.Goroutines) / n)
	c.HeapPerRunKiB.add((float64(s.after.HeapInuse) - float64(s.before.HeapInuse)) / 1024 / n)
	c.StackPerRunKiB.add((float64(s.after.StackInuse) - float64(s.before.StackInuse)) / 1024 / n)
	c.EndRSSPerRunKiB.add(float64(s.end.RSSKiB-s.before.RSSKiB) / n)
	c.EndHeapPerRunKiB.add((float64(s.end.HeapInuse) - float64(s.before.HeapInuse)) / 1024 / n)
	c.EndStackPerRunKiB.add((float64(s.end.StackInuse) - float64(s.before.StackInuse)) / 1024 / n)
	c.IdleGCs.add(float64(s.end.NumGC - s.after.NumGC))
	c.IdleCPUPercent.add(s.idleCPUPercent)
	c.RSSBeforeMiB.add(float64(s.before.RSSKiB) / 1024)
	c.RSSAfterMiB.add(float64(s.after.RSSKiB) / 1024)
	c.RampSeconds.add(s.ramp.Seconds())
}

// workerProc is the concurrency scenario's worker: a child process, or
// ChildMain in a goroutine of this process.
type workerProc struct {
	statsURL string
	stop     func() error
}

func startWorkerProc(ctx context.Context, argv []string, cfg ChildConfig) (*workerProc, error) {
	conf, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode child config: %w", err)
	}
	if len(argv) == 0 {
		return startInProcess(ctx, string(conf))
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), ChildEnv+"="+string(conf))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("child stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("child stdout: %w", err)
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker process %s: %w", argv[0], err)
	}
	waited := make(chan error, 1)
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = stdin.Close() // asks the child to shut down
		timer := time.NewTimer(30 * time.Second)
		defer timer.Stop()
		var werr error
		select {
		case werr = <-waited:
		case <-timer.C:
			_ = cmd.Process.Kill()
			werr = <-waited
		}
		if werr != nil {
			return fmt.Errorf("worker process: %w; stderr: %s", werr, stderr.String())
		}
		return nil
	}
	url, err := readChildURL(ctx, stdout)
	// Wait only after stdout has been read from (Wait closes the pipe).
	go func() { waited <- cmd.Wait() }()
	if err != nil {
		_ = cmd.Process.Kill()
		_ = stop()
		return nil, fmt.Errorf("worker process: %w; stderr: %s", err, stderr.String())
	}
	return &workerProc{statsURL: url, stop: stop}, nil
}

func startInProcess(ctx context.Context, conf string) (*workerProc, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := ChildMain(context.WithoutCancel(ctx), conf, inR, outW)
		_ = outW.Close()
		done <- err
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = inW.Close()
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return errors.New("in-process worker did not stop within 60s")
		}
	}
	url, err := readChildURL(ctx, outR)
	if err != nil {
		_ = stop()
		return nil, fmt.Errorf("in-process worker: %w", err)
	}
	return &workerProc{statsURL: url, stop: stop}, nil
}

// concurrencyRun opens n runs that the simulator holds ("#sim hang") on one
// worker, and measures the worker's process before and with them, then its
// CPU over an idle window. Memory figures are not forced by a GC: they are
// what an operator's RSS graph shows.
func (e *env) concurrencyRun(ctx context.Context, tag string, n int, idle time.Duration, argv []string) (concSample, error) {
	s, err := startSim(ctx)
	if err != nil {
		return concSample{}, err
	}
	defer s.stop()
	// Every run holds a job unacked: the consumer must allow that many.
	cfg, cleanup, err := e.newQueue(ctx, tag, n+100)
	if err != nil {
		return concSample{}, err
	}
	defer cleanup()
	wp, err := startWorkerProc(ctx, argv, ChildConfig{
		NatsURL: e.url, AgentURL: s.url, Prefix: cfg.Prefix,
		Concurrency: n, MaxAckPending: n + 100,
	})
	if err != nil {
		return concSample{}, err
	}
	defer func() { _ = wp.stop() }()
	if err := waitConsumerReady(ctx, e.js, cfg.JobsStream(), cfg.WorkersDurable(), 1); err != nil {
		return concSample{}, err
	}
	out := concSample{n: n}
	if out.before, err = fetchStats(ctx, wp.statsURL); err != nil {
		return concSample{}, err
	}
	t0 := time.Now()
	if err := publishJobs(ctx, e.js, cfg, tag, n, "#sim hang"); err != nil {
		return concSample{}, err
	}
	// Wait until every run is open and followed, then until the worker is
	// quiet (its goroutine count holds still).
	var last procStats
	for i := 0; ; i++ {
		st, err := fetchStats(ctx, wp.statsURL)
		if err != nil {
			return concSample{}, err
		}
		if s.ActiveRuns() == n && int(st.InFlight) == n {
			if out.ramp == 0 {
				out.ramp = time.Since(t0)
			} else if st.Goroutines == last.Goroutines {
				break
			}
		}
		last = st
		if !sleepCtx(ctx, 250*time.Millisecond) {
			return concSample{}, fmt.Errorf("wait for %d runs in flight (have %d runs, %v in flight): %w", n, s.ActiveRuns(), st.InFlight, ctx.Err())
		}
	}
	out.after = last
	if !sleepCtx(ctx, idle) {
		return concSample{}, fmt.Errorf("idle window: %w", ctx.Err())
	}
	end, err := fetchStats(ctx, wp.statsURL)
	if err != nil {
		return concSample{}, err
	}
	if int(end.InFlight) != n {
		return concSample{}, fmt.Errorf("runs in flight dropped from %d to %v during the idle window", n, end.InFlight)
	}
	out.end = end
	out.idleCPUPercent = float64(end.CPUNanos-out.after.CPUNanos) / float64(idle.Nanoseconds()) * 100
	// Close the simulator's streams only after the worker has handed the
	// jobs back, so no run ends in a burst of errors.
	if err := wp.stop(); err != nil {
		return concSample{}, err
	}
	return out, nil
}

// limitedBuffer keeps the first 64 KiB written to it (a child's stderr).
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 64<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
