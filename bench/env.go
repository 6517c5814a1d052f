package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
)

// env is the embedded NATS server every scenario of a Run shares, and the
// producer's connection to it.
type env struct {
	srv *server.Server
	url string
	nc  *nats.Conn
	js  jetstream.JetStream
	seq atomic.Int64 // numbers the per-scenario prefixes
}

func startEnv(dir string, durable bool) (*env, error) {
	// Lazy fsync (nats-server's default, every 2 minutes), set explicitly:
	// the figures in BENCHMARKS.md were measured so and stay comparable
	// run to run; Options.Durable fsyncs every write instead.
	sync := queue.SyncLazy
	if durable {
		sync = queue.SyncAlways
	}
	srv, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: dir, Port: -1, ServerName: "jetpilot-bench", Sync: sync})
	if err != nil {
		return nil, fmt.Errorf("start NATS: %w", err)
	}
	e := &env{srv: srv, url: srv.ClientURL()}
	e.nc, e.js, err = e.connect("jetpilot-bench producer")
	if err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	e.nc.Close()
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// connect opens a connection of its own, as every worker in a fleet has.
func (e *env) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(e.url, nats.Name(name))
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s to NATS: %w", name, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open JetStream for %s: %w", name, err)
	}
	return nc, js, nil
}

// newQueue creates the streams and bucket under a fresh prefix, so runs do
// not see each other's messages, and returns a cleanup that empties them.
// The streams are purged, not deleted: nats-server removes an account's
// streams folder when its last stream is deleted, racing a stream being
// created at that moment ("could not create storage directory").
func (e *env) newQueue(ctx context.Context, name string, maxAckPending int) (queue.Config, func(), error) {
	// JetStream reserves every stream's max bytes up front, and every run
	// makes a fresh queue on the same server: with the production defaults
	// (5.4 GiB a queue) a whole `make bench` would outgrow a modest disk's
	// reservation. A run stores a few MiB per stream.
	const mb = benchStreamMaxBytes
	cfg := queue.Config{
		Prefix:        fmt.Sprintf("b%d_%s", e.seq.Add(1), name),
		MaxAckPending: maxAckPending,
		JobsMaxBytes:  mb, ResultsMaxBytes: mb, ApprovalsMaxBytes: mb, DecisionsMaxBytes: mb,
		ControlMaxBytes: mb, EventsMaxBytes: mb, DeadMaxBytes: mb, AuditMaxBytes: mb,
	}.WithDefaults()
	if err := queue.Setup(ctx, e.js, cfg); err != nil {
		return cfg, nil, fmt.Errorf("set up streams for %s: %w", name, err)
	}
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, sc := range cfg.StreamConfigs() {
			if s, err := e.js.Stream(ctx, sc.Name); err == nil {
				_ = s.Purge(ctx)
			}
		}
		for _, bucket := range []string{cfg.RunsBucket(), cfg.PolicyBucket()} {
			if s, err := e.js.Stream(ctx, "KV_"+bucket); err == nil {
				_ = s.Purge(ctx)
			}
		}
	}
	return cfg, cleanup, nil
}

// benchStreamMaxBytes bounds each stream of a bench queue.
const benchStreamMaxBytes int64 = 128 << 20

// jobID names job i of a scenario run.
func jobID(tag string, i int) string { return tag + "-" + strconv.Itoa(i) }

// jobBody is a minimal valid job.
func jobBody(id, prompt string) []byte {
	return []byte(`{"id":"` + id + `","prompt":` + strconv.Quote(prompt) + `}`)
}

// publishJob publishes one job asynchronously with its id as Nats-Msg-Id.
func publishJob(js jetstream.JetStream, cfg queue.Config, id, prompt string) (jetstream.PubAckFuture, error) {
	msg := &nats.Msg{Subject: cfg.JobSubject("default"), Data: jobBody(id, prompt), Header: nats.Header{}}
	// A full async window waits for acks (the default 200ms stall wait fails
	// the run as soon as the machine is busy with something else).
	f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(cfg.JobsStream()),
		jetstream.WithStallWait(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("publish job %s: %w", id, err)
	}
	return f, nil
}

// publishJobs publishes n jobs as fast as the async window allows and
// waits for every ack.
func publishJobs(ctx context.Context, js jetstream.JetStream, cfg queue.Config, tag string, n int, prompt string) error {
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := publishJob(js, cfg, jobID(tag, i), prompt)
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	return waitAcks(ctx, futures)
}

func waitAcks(ctx context.Context, futures []jetstream.PubAckFuture) error {
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("job publish not acked: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("wait for job publish acks: %w", ctx.Err())
		}
	}
	return nil
}

// resultWatch counts the distinct jobs that got a result, from a core NATS
// subscription on the results subjects (it sees each result as it is
// published; duplicates that JetStream drops are counted once).
type resultWatch struct {
	sub  *nats.Subscription
	want int
	done chan struct{}

	mu   sync.Mutex
	seen map[string]struct{}
	at   time.Time // when the want-th distinct result arrived
}

func watchResults(nc *nats.Conn, cfg queue.Config, want int) (*resultWatch, error) {
	rw := &resultWatch{want: want, done: make(chan struct{}), seen: make(map[string]struct{}, want)}
	prefix := strings.TrimSuffix(cfg.ResultsWildcard(), ">")
	sub, err := nc.Subscribe(cfg.ResultsWildcard(), func(m *nats.Msg) {
		id := strings.TrimPrefix(m.Subject, prefix)
		rw.mu.Lock()
		defer rw.mu.Unlock()
		if _, ok := rw.seen[id]; ok {
			return
		}
		rw.seen[id] = struct{}{}
		if len(rw.seen) == rw.want {
			rw.at = time.Now()
			close(rw.done)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to results: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to results: %w", err)
	}
	// The subscription must be known to the server before jobs flow.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe to results: flush: %w", err)
	}
	rw.sub = sub
	return rw, nil
}

// wait returns when every result arrived, with the time the last did.
func (rw *resultWatch) wait(ctx context.Context) (time.Time, error) {
	select {
	case <-rw.done:
		rw.mu.Lock()
		defer rw.mu.Unlock()
		return rw.at, nil
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("wait for results: got %d of %d: %w", rw.count(), rw.want, ctx.Err())
	}
}

func (rw *resultWatch) count() int {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return len(rw.seen)
}

func (rw *resultWatch) stop() { _ = rw.sub.Unsubscribe() }

// waitConsumerReady waits until the durable consumer exists and has a pull
// request waiting, i.e. a worker is ready to take jobs.
func waitConsumerReady(ctx context.Context, js jetstream.JetStream, stream, durable string, pullers int) error {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		c, err := js.Consumer(ctx, stream, durable)
		if err == nil {
			var info *jetstream.ConsumerInfo
			info, err = c.Info(ctx)
			if err == nil && info.NumWaiting >= pullers {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("%d of %d pullers waiting", info.NumWaiting, pullers)
			}
		}
		last = err
		select {
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("consumer %s not ready after 30s: %w", durable, last)
		case <-ctx.Done():
			return fmt.Errorf("wait for consumer %s: %w", durable, ctx.Err())
		}
	}
}

// allocCounter measures heap allocations and CPU time of the whole process
// over a span.
type allocCounter struct {
	mallocs, bytes uint64
	cpu            time.Duration
}

func startAllocs() allocCounter {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return allocCounter{ms.Mallocs, ms.TotalAlloc, processCPU()}
}

func (a allocCounter) perJob(n int) (allocs, bytes float64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.Mallocs-a.mallocs) / float64(n), float64(ms.TotalAlloc-a.bytes) / float64(n)
}

// cpuPerJob is the process's CPU time (user + system) since the start, per
// job, in microseconds. On a machine whose cores are shared it moves much
// less than jobs/s, which follows whatever else runs.
func (a allocCounter) cpuPerJob(n int) float64 {
	return float64((processCPU() - a.cpu).Microseconds()) / float64(n)
}

// processCPU is this process's CPU time so far (0 if unreadable).
func processCPU() time.Duration {
	d, _ := readProcessCPU()
	return d
}

// readProcessCPU is this process's CPU time so far, user + system
// (getrusage).
func readProcessCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// machineInfo describes this machine from /proc (best effort).
func machineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kb, err := procStatusKiB("/proc/meminfo", "MemTotal"); err == nil {
		m.MemoryMiB = int(kb / 1024)
	}
	return m
}

// procStatusKiB reads a "Key:   123 kB" line of a /proc file.
func procStatusKiB(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			break
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s in %s: %w", key, path, err)
		}
		return n, nil
	}
	return 0, errors.New(key + " not found in " + path)
}
