package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// Runner runs one phase of a job. *spawn.Runner is the real one; benchmarks
// use one that returns at once to measure the queue path alone.
type Runner interface {
	// Run runs the phase spec describes; it must not keep spec after it
	// returns. The Outcome is non-nil when the error is nil. By pointer: a
	// job's goroutine waits in Run for the whole run, and its stack keeps
	// every byte of the frames on that call (see spawn.Runner.Run).
	Run(ctx context.Context, spec *spawn.Spec) (*spawn.Outcome, error)
	// CancelRun cancels (and wakes) a run nobody follows.
	CancelRun(ctx context.Context, cur spawn.Cursor) error
}

// ReadyRunner is a Runner that can tell whether its agent server takes work
// now (*spawn.Runner does). A worker whose runner is one stops taking jobs
// while it is not ready, instead of pulling them only to hand them back.
type ReadyRunner interface {
	Runner
	Ready(ctx context.Context) error
}

// Worker pulls jobs from the shared consumer and runs them.
type Worker struct {
	js     jetstream.JetStream
	qcfg   queue.Config
	runner Runner
	runs   *queue.RunStore
	opts   Options
	log    *slog.Logger
	m      *Metrics

	slots chan struct{} // one token per running job or decision phase
	beats *heartbeats
	gate  *agentGate // closed while the agent server cannot take work
	// polGate is closed while the stored policy is unknown or unreadable;
	// pol is the stored policy (nil: none is stored, opts.fallback applies).
	polGate *agentGate
	pol     atomic.Pointer[policy.Policy]

	auditLog     *queue.AuditLog  // approvals, decisions, expiries and cancels
	eventsStream jetstream.Stream // EVENTS, for the last event of a job
	refusals     refusalCounts    // unverified refused decisions, per job
	keys         *keyGate         // session_key and concurrency_key leases
	stopping     <-chan struct{}  // closed when Run's context ends (set by Run)

	activeMu sync.Mutex
	active   map[string]*activeJob // job id -> the phase this worker follows

	createdMu sync.Mutex
	created   map[string]time.Time // worker consumer name -> when it was created
}

// consumerCreated is when the named consumer was created, as this worker
// last saw it; the zero time when unknown (then no delivery counts as fresh).
func (w *Worker) consumerCreated(name string) time.Time {
	w.createdMu.Lock()
	defer w.createdMu.Unlock()
	if t, ok := w.created[name]; ok {
		return t
	}
	return time.Now().Add(24 * 365 * time.Hour)
}

func (w *Worker) noteConsumer(c jetstream.Consumer) {
	info := c.CachedInfo()
	w.noteCreated(info.Name, info.Created)
}

func (w *Worker) noteCreated(name string, created time.Time) {
	w.createdMu.Lock()
	defer w.createdMu.Unlock()
	w.created[name] = created
}

// New makes a worker. The streams and bucket must exist (queue.Setup); the
// worker's consumer is created or updated by Run.
func New(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, runner Runner, opts Options) (*Worker, error) {
	qd := qcfg.WithDefaults()
	opts, err := opts.withDefaults(qd.AckWait)
	if err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	if opts.ApprovalTimeout >= qd.ApprovalsMaxAge {
		// The approval's expiry timer lives in the decisions stream, which
		// keeps messages ApprovalsMaxAge: it must be due before it is dropped.
		return nil, fmt.Errorf("worker options: approval timeout %s must be shorter than how long approvals are kept (%s)", opts.ApprovalTimeout, qd.ApprovalsMaxAge)
	}
	runs, err := queue.NewRunStore(ctx, js, qcfg)
	if err != nil {
		return nil, fmt.Errorf("open runs bucket: %w", err)
	}
	auditLog, err := queue.NewAuditLog(ctx, js, qcfg)
	if err != nil {
		return nil, fmt.Errorf("open audit stream: %w", err)
	}
	eventsStream, err := js.Stream(ctx, qcfg.WithDefaults().EventsStream())
	if err != nil {
		return nil, fmt.Errorf("open events stream: %w", err)
	}
	keys, err := queue.NewKeyStore(ctx, js, qcfg)
	if err != nil {
		return nil, fmt.Errorf("open keys bucket: %w", err)
	}
	return &Worker{
		js:           js,
		qcfg:         qcfg,
		runner:       runner,
		runs:         runs,
		auditLog:     auditLog,
		eventsStream: eventsStream,
		keys:         newKeyGate(keys),
		opts:         opts,
		log:          opts.Logger.With("worker", opts.Name),
		m:            opts.Metrics,
		slots:        make(chan struct{}, opts.Concurrency),
		beats:        newHeartbeats(opts.Heartbeat),
		gate:         newGate(closedUnless(isReadyRunner(runner), errAgentUnknown)),
		polGate:      newGate(closedUnless(opts.Policies != nil, errPolicyUnknown)),
		active:       map[string]*activeJob{},
		created:      map[string]time.Time{},
	}, nil
}

// Name is the worker's name as it appears in results.
func (w *Worker) Name() string { return w.opts.Name }

// Run pulls and runs jobs until ctx is done, then shuts down gracefully: it
// stops pulling, lets running jobs finish within ShutdownGrace, then hands
// back (or cancels, per ShutdownMode) what is left. It returns nil after a
// clean shutdown, or the error that kept it from starting.
func (w *Worker) Run(ctx context.Context) error {
	w.stopping = ctx.Done()
	consumers, err := w.qcfg.EnsureWorkerConsumer(ctx, w.js, w.opts.Profiles)
	if err != nil {
		return fmt.Errorf("worker consumer: %w", err)
	}
	deciders, err := w.qcfg.EnsureDecisionConsumer(ctx, w.js)
	if err != nil {
		return fmt.Errorf("decisions consumer: %w", err)
	}
	controllers, err := w.qcfg.EnsureControlConsumer(ctx, w.js)
	if err != nil {
		return fmt.Errorf("control consumer: %w", err)
	}
	// Jobs outlive ctx by up to the grace period, so they get their own
	// context, cancelled only when the grace period is over.
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()

	// Heartbeats go on until every held message is settled, grace included.
	beatCtx, stopBeats := context.WithCancel(jobCtx)
	beatsDone := make(chan struct{})
	go func() {
		defer close(beatsDone)
		w.beats.run(beatCtx)
	}()
	defer func() {
		stopBeats()
		<-beatsDone
	}()

	var jobs, loops sync.WaitGroup
	loops.Add(1)
	go func() {
		defer loops.Done()
		w.auditRefusals(ctx)
	}()
	loops.Add(1)
	go func() {
		defer loops.Done()
		w.keys.store.Changes(ctx, w.keys.changed)
	}()
	if w.opts.Policies != nil {
		loops.Add(1)
		go func() {
			defer loops.Done()
			w.watchPolicy(ctx, w.opts.Policies)
		}()
	}
	if rr, ok := w.runner.(ReadyRunner); ok {
		loops.Add(1)
		go func() {
			defer loops.Done()
			w.watchAgent(ctx, rr)
		}()
	}
	stopCancels, err := w.serveCancels(jobCtx, w.js.Conn())
	if err != nil {
		return fmt.Errorf("subscribe to cancel requests: %w", err)
	}
	defer stopCancels()
	stopSteers, err := w.serveSteers(jobCtx, w.js.Conn())
	if err != nil {
		return fmt.Errorf("subscribe to steering requests: %w", err)
	}
	defer stopSteers()
	type source struct {
		c      jetstream.Consumer
		slots  chan struct{}
		handle func(context.Context, jetstream.Msg, *slot)
	}
	// Decisions and control messages have their own slots: an idle fetch
	// of theirs must not hold a job slot, and resuming a paused run must not
	// wait behind new jobs.
	resume := make(chan struct{}, w.opts.Concurrency)
	pulls := []source{{deciders, resume, w.serve(msgDecision, w.fetchDecision)}, {controllers, resume, w.serve(msgControl, w.fetchControl)}}
	for _, c := range consumers {
		w.noteConsumer(c)
		pulls = append(pulls, source{c, w.slots, w.serve(msgJob, w.fetchJob)})
	}
	for _, p := range pulls {
		loops.Add(1)
		go func() {
			defer loops.Done()
			w.pull(ctx, jobCtx, p.c, p.slots, &jobs, p.handle)
		}()
	}
	defer w.m.queue.attach(w.queueSource(consumers))()
	w.log.Info("worker started", "concurrency", w.opts.Concurrency, "consumers", len(consumers))
	loops.Wait()

	w.drain(&jobs, cancelJobs)
	// A worker that stops says what it refused.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditRefusalsEvery)
	for range 3 {
		if !w.flushAllRefusals(fctx) {
			break
		}
	}
	cancel()
	w.log.Info("worker stopped")
	return nil
}

// pull fetches messages from c and hands each to handle in a goroutine of
// its own while it runs (msgRunners), never holding more messages than slots has free tokens: a
// message never waits in a local buffer while its AckWait runs out. An idle
// pull holds one token (its pending one-message fetch); when messages flow it
// takes every free token for a batch.
func (w *Worker) pull(ctx, jobCtx context.Context, c jetstream.Consumer, slots chan struct{}, jobs *sync.WaitGroup, handle func(context.Context, jetstream.Msg, *slot)) {
	retry := time.Duration(0)
	hand := msgRunners{ctx: ctx, jobCtx: jobCtx, jobs: jobs, slots: slots, work: make(chan jetstream.Msg), handle: handle}
	dispatch := func(batch jetstream.MessageBatch) (int, error) {
		got := 0
		for msg := range batch.Messages() {
			got++
			hand.give(msg)
		}
		return got, batch.Error()
	}
	for {
		if !w.gate.wait(ctx) || !w.polGate.wait(ctx) {
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
	more:
		for n < cap(slots) {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		// First take what is there now, with every free slot.
		got := 0
		batch, err := c.FetchNoWait(n)
		if err == nil {
			got, err = dispatch(batch)
		}
		if got == 0 && err == nil && ctx.Err() == nil {
			// Nothing waiting: wait for the next message with one slot.
			for range n - 1 {
				<-slots
			}
			n = 1
			fetchCtx, cancel := context.WithTimeout(ctx, w.opts.FetchWait)
			batch, err = c.Fetch(1, jetstream.FetchContext(fetchCtx))
			if err == nil {
				got, err = dispatch(batch)
			}
			cancel()
		}
		for range n - got {
			<-slots
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			// The connection is down or the consumer is gone: back off so a
			// NATS outage doesn't turn into a hot loop, and keep trying.
			retry = min(max(2*retry, 100*time.Millisecond), 5*time.Second)
			w.log.Warn("fetch", "consumer", c.CachedInfo().Name, "err", err, "retry_in", retry)
			if !sleep(ctx, retry) {
				return
			}
			// The consumer may have been deleted and created again: learn
			// its new creation time, which tells first deliveries apart.
			if info, err := c.Info(ctx); err == nil {
				w.noteCreated(info.Name, info.Created)
			}
			continue
		}
		retry = 0
	}
}

// drain waits for the jobs in hand to finish within ShutdownGrace, then
// cancels their context (they are handed back, see ShutdownMode) and waits
// for them to be settled.
func (w *Worker) drain(jobs *sync.WaitGroup, cancelJobs context.CancelFunc) {
	idle := make(chan struct{})
	go func() {
		jobs.Wait()
		close(idle)
	}()
	if running := w.running(); running > 0 {
		w.log.Info("shutting down: waiting for running jobs", "running", running, "grace", w.opts.ShutdownGrace)
	}
	grace := time.NewTimer(w.opts.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-idle:
	case <-grace.C:
		w.log.Warn("shutdown grace over: handing running jobs back", "running", w.running(), "mode", w.opts.ShutdownMode)
		cancelJobs()
		<-idle
	}
}

func isReadyRunner(r Runner) bool {
	_, ok := r.(ReadyRunner)
	return ok
}

// running counts the job phases this worker follows now.
func (w *Worker) running() int {
	w.activeMu.Lock()
	defer w.activeMu.Unlock()
	return len(w.active)
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// handlerIdle is how long a message's goroutine waits for the next message
// before it ends.
const handlerIdle = 2 * time.Second

// msgRunners runs each message in a goroutine that, done with it, takes the
// next one if it comes within handlerIdle. A goroutine per message would
// start on a small stack and grow it again for every job: measured at 5 % of
// the queue path's CPU (runtime.newstack, copystack). Each goroutine counts
// in jobs while it lives, so a stopping worker waits for it; it ends when
// ctx (the pull loop's) is done and it holds no message.
type msgRunners struct {
	ctx, jobCtx context.Context
	jobs        *sync.WaitGroup
	slots       chan struct{}
	work        chan jetstream.Msg // unbuffered: a send succeeds only into an idle goroutine
	handle      func(context.Context, jetstream.Msg, *slot)
}

// give hands msg to an idle goroutine, or starts one.
func (h *msgRunners) give(msg jetstream.Msg) {
	select {
	case h.work <- msg:
		return
	default:
	}
	h.jobs.Add(1)
	go h.loop(msg)
}

// loop is one goroutine of h. Its frame is under every run in flight, so it
// holds only what the run needs; the wait for the next message is next's.
// (A run's whole chain must stay under ~3.3 KiB for its stack to shrink to
// 8 KiB at a GC: see BENCHMARKS.md, "RSS per in-flight run".) A panic in a
// handler ends the process, so nothing here is deferred.
func (h *msgRunners) loop(msg jetstream.Msg) {
	idle := time.NewTimer(handlerIdle)
	for ok := true; ok; msg, ok = h.next(idle) {
		s := &slot{ch: h.slots, held: true}
		h.handle(h.jobCtx, msg, s)
		s.release()
	}
	idle.Stop()
	h.jobs.Done()
}

// next waits for the next message, at most handlerIdle; false when the
// goroutine should end.
//
//go:noinline
func (h *msgRunners) next(idle *time.Timer) (jetstream.Msg, bool) {
	idle.Reset(handlerIdle)
	select {
	case msg := <-h.work:
		return msg, true
	case <-idle.C:
		return nil, false
	case <-h.ctx.Done():
		return nil, false
	}
}

// slot is a message's token of its pull loop's slots: held while it runs,
// given back while a keyed job waits for its turn (keys.go), taken again
// when the turn comes. Used from the message's goroutine only.
type slot struct {
	ch   chan struct{}
	held bool
}

func (s *slot) release() {
	if s.held {
		s.held = false
		<-s.ch
	}
}

// acquire takes a token again; false when ctx ended first.
func (s *slot) acquire(ctx context.Context) bool {
	if s.held {
		return true
	}
	select {
	case s.ch <- struct{}{}:
		s.held = true
		return true
	case <-ctx.Done():
		return false
	}
}
