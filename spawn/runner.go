package spawn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// RunnerOptions configure a Runner. Zero values take the documented defaults.
type RunnerOptions struct {
	// Worker is the worker name put in results.
	Worker string
	// StallTimeout: an event stream that delivers no bytes at all (not even
	// a keep-alive, sent every 15s by the server) for this long counts as
	// dropped and is reconnected. Default 45s.
	StallTimeout time.Duration
	// ReconnectInitialInterval is the first reconnect backoff. Default 100ms.
	ReconnectInitialInterval time.Duration
	// ReconnectMaxInterval caps the reconnect backoff. Default 5s.
	ReconnectMaxInterval time.Duration
	// MaxReconnectTime: after this long of consecutive failures to follow
	// the run (reconnects, decisions, lookups) Run gives up with a transient
	// *CursorError. Default 2m.
	MaxReconnectTime time.Duration
	// MaxFrameBytes caps one SSE frame. Default DefaultMaxFrameBytes (8 MiB).
	MaxFrameBytes int
	// CursorInterval is the minimum time between two Spec.OnCursor calls
	// while events flow (pauses, ends and new ids are always reported).
	// Default 250ms.
	CursorInterval time.Duration
	// CancelTimeout bounds the cancel request sent when a phase times out
	// (its caller's context is spent by then). Default 10s.
	CancelTimeout time.Duration
	// MaxTextBytes is how much of the agent's text a phase keeps: the last
	// MaxTextBytes bytes (the end, where the conclusion is), so a run's
	// memory is bounded whatever the server streams. Default
	// DefaultMaxTextBytes.
	MaxTextBytes int
	// CancelGrace is how long the runner follows a run after it sent a
	// cancel (on Control.Cancel or when the phase times out) for the server
	// to confirm the run's end. The real server may never end a run it was
	// asked to cancel (a run in an LLM call that never returns); the phase
	// then ends anyway, with a warning that the end was not confirmed.
	// Default 30s.
	CancelGrace time.Duration
	// LivenessInterval: when a followed run has sent no event for this long,
	// the runner asks the server whether the run is still alive. Many
	// failures on the real server end a run without any event (sandbox or
	// checkpoint failures, a conflicting decision, a restart), and its
	// stream then carries keep-alives forever. Well under a minute so a lost
	// run is reported within LivenessInterval plus one request. Default 20s.
	LivenessInterval time.Duration
	// SettleWait bounds how long the runner waits for a session to leave
	// "running" after its run ended, before it reads the session's messages:
	// the server writes the final checkpoint (which the messages are read
	// from) after run_completed. Default 10s.
	SettleWait time.Duration
	// EndedReplayWait is how long the runner reads the replay of a run that
	// has already ended, looking for its final event, before it settles for
	// the session snapshot. The replay arrives in one burst, so this is a
	// quiet period, not a total. Default 1s.
	EndedReplayWait time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o *RunnerOptions) setDefaults() {
	if o.StallTimeout <= 0 {
		o.StallTimeout = 45 * time.Second
	}
	if o.ReconnectInitialInterval <= 0 {
		o.ReconnectInitialInterval = 100 * time.Millisecond
	}
	if o.ReconnectMaxInterval <= 0 {
		o.ReconnectMaxInterval = 5 * time.Second
	}
	if o.MaxReconnectTime <= 0 {
		o.MaxReconnectTime = 2 * time.Minute
	}
	if o.MaxFrameBytes <= 0 {
		o.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if o.CursorInterval <= 0 {
		o.CursorInterval = 250 * time.Millisecond
	}
	if o.CancelTimeout <= 0 {
		o.CancelTimeout = 10 * time.Second
	}
	if o.MaxTextBytes <= 0 {
		o.MaxTextBytes = DefaultMaxTextBytes
	}
	if o.CancelGrace <= 0 {
		o.CancelGrace = 30 * time.Second
	}
	if o.LivenessInterval <= 0 {
		o.LivenessInterval = 20 * time.Second
	}
	if o.SettleWait <= 0 {
		o.SettleWait = 10 * time.Second
	}
	if o.EndedReplayWait <= 0 {
		o.EndedReplayWait = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// DefaultMaxTextBytes is how much of the agent's text a phase keeps; a
// result carries at most as much.
const DefaultMaxTextBytes = 256 << 10

// Runner runs job phases on one agent server. It is safe for concurrent use;
// each Run is independent.
type Runner struct {
	c    *Client
	opts RunnerOptions
}

// NewRunner returns a runner using c.
func NewRunner(c *Client, opts RunnerOptions) *Runner {
	opts.setDefaults()
	return &Runner{c: c, opts: opts}
}

// Cursor is how far a job got on the agent server: enough to re-attach to its
// session and run, and to replay the events not yet processed.
type Cursor struct {
	SessionID   string `json:"session_id"`
	RunID       string `json:"run_id,omitempty"`
	LastEventID uint64 `json:"last_event_id"`
	// Decided are the tool call ids this job has sent decisions for (the
	// newest maxDecidedIDs). The server kills a run whose call is decided
	// twice, so a runner that re-attaches never decides these again.
	Decided []string `json:"decided,omitempty"`
	// MessageBase is how many messages the session had before this job's
	// run: a continued session (Spec.Continue) holds earlier jobs'
	// messages, and this job's text is what comes after them.
	MessageBase int `json:"message_base,omitempty"`
}

func (c Cursor) equal(o Cursor) bool {
	return c.SessionID == o.SessionID && c.RunID == o.RunID && c.LastEventID == o.LastEventID &&
		c.MessageBase == o.MessageBase && slices.Equal(c.Decided, o.Decided)
}

// Spec is one job phase to run.
type Spec struct {
	Job schemas.Job
	// Attempt is the delivery attempt, copied to the Result.
	Attempt int
	// Timeout is the whole-phase timeout; 0 = none. When it elapses the run
	// is cancelled on the server and the Result is timed_out.
	Timeout time.Duration
	// Policy returns the operator's policy in force. It is read at each
	// tool decision and each usage report, so a new version reaches a run
	// already going. nil: policy.Default().
	Policy func() *policy.Policy
	// UsedTokens is what the job's earlier phases used, counted against
	// the policy's jobs.max_tokens with this phase's usage.
	UsedTokens int64
	// OnDecision, if set, is called for every call the policy decides in
	// this phase, before the decision is sent (or the call left for a
	// human), so the caller can say which rule decided. Called from Run's
	// goroutine.
	OnDecision func(call schemas.ToolCall, d policy.Decision)
	// Resume follows an existing session/run (re-attach after a crash or a
	// redelivery, or continue after a pause was decided) instead of starting
	// one. A cursor with only SessionID starts the run if the session never
	// got one.
	Resume *Cursor
	// Continue names an existing session to send the job's prompt to (a
	// conversation: jobs with one session_key), instead of creating one.
	// The caller guarantees no other run of the session is going (the
	// server would answer 409). A session the server no longer has is
	// replaced by a new one, with a warning; a session still busy with a
	// run is a transient error (ErrSessionBusy), so the start is retried.
	Continue *Cursor
	// OnCursor is called when the session is created, when the run id is
	// known, as events advance (at most every RunnerOptions.CursorInterval)
	// and on pause or end, so the caller can persist it. Called from Run's
	// goroutine; it should not block for long.
	OnCursor func(Cursor)
	// OnEvent receives every event of this run, in order and without
	// duplicates, for live progress. May be nil. Called from Run's goroutine.
	OnEvent func(Event)
	// Decisions are sent, in one request, before a resumed run is followed:
	// a human's answer to a pause together with the policy's held verdicts
	// (Outcome.Held). Calls in Resume.Decided are never sent again.
	Decisions map[string]schemas.ToolDecision
	// Control, if set, lets the caller cancel the run (see Control).
	Control *Control
	// RunStartedAt is when the run being resumed started, as recorded. An
	// agent server whose uptime is shorter restarted under the run. Zero:
	// unknown (the run's age is then not used to tell a restart).
	RunStartedAt time.Time
}

// Idempotency keys: the same on every attempt of a job, so a redelivered job
// never creates a second session or starts a second run while the server
// remembers the key.
func sessionKey(jobID string) string { return "jetpilot-" + jobID + "-session" }
func runKey(jobID string) string     { return "jetpilot-" + jobID + "-run" }

// ErrSessionBusy: the session a job continues (Spec.Continue) still runs
// another run, such as an earlier job's whose cancel the server never
// confirmed. Transient: the start is retried.
var ErrSessionBusy = errors.New("the session is busy with another run")

var (
	errPhaseTimeout = errors.New("job phase timed out")
	// errCancelUnconfirmed cuts a run's following when the server has not
	// confirmed a cancelled run's end within CancelGrace.
	errCancelUnconfirmed = errors.New("the agent server did not confirm the end of the cancelled run")
)

func validateSpec(spec *Spec) error {
	if spec == nil {
		return errors.New("spawn: run: spec is required")
	}
	if strings.TrimSpace(spec.Job.ID) == "" {
		return errors.New("spawn: run: job id is required")
	}
	if spec.Timeout < 0 {
		return fmt.Errorf("spawn: run job %s: negative timeout %s", spec.Job.ID, spec.Timeout)
	}
	if spec.Resume != nil {
		if strings.TrimSpace(spec.Resume.SessionID) == "" {
			return fmt.Errorf("spawn: run job %s: resume cursor has no session id", spec.Job.ID)
		}
		return nil
	}
	if len(spec.Decisions) > 0 {
		return fmt.Errorf("spawn: run job %s: decisions need a run to resume", spec.Job.ID)
	}
	if strings.TrimSpace(spec.Job.Prompt) == "" {
		return fmt.Errorf("spawn: run job %s: prompt is required", spec.Job.ID)
	}
	return nil
}

// Run runs one job phase and returns its Outcome: completed, failed,
// cancelled, timed_out, or paused (tool calls wait for a human; resume with
// the Result's session and run ids, the last cursor reported, and the
// human's decisions together with Outcome.Held in Spec.Decisions).
//
// It returns an error only when it could not get a run going or could not
// follow it: a *CursorError carrying the cursor reached, so a retry passes it
// as Spec.Resume and re-attaches instead of starting again. IsTransient tells
// whether retrying may help. A permanent rejection by the agent server
// (invalid_context, ...) is a failed Result, not an error. A run that ended
// without telling (no final event, the session no longer running it) is a
// failed Result with code run_lost, never completed, and is never started
// again.
//
// Result.Stdout is the text streamed during this phase; the final Result of
// a resumed phase carries the run's whole text, rebuilt from the session's
// messages once the session has settled. Result.ToolCalls counts the calls
// this phase decided, Spec.Decisions included.
//
// A phase that times out, or whose Spec.Control is cancelled, is cancelled
// on the server and followed for up to RunnerOptions.CancelGrace to its end;
// its Result comes within that bound whatever the server does.
//
// When ctx is cancelled (worker shutdown) Run returns ctx's cause wrapped in a
// *CursorError and leaves the run going on the server: use CancelRun to stop
// it.
//
// Run reads spec while it runs: the caller must not change it until Run
// returns. Spec and Outcome go by pointer because Run's goroutine blocks
// here for the whole run: every byte of the frames on its call chain is
// kept per run in flight (see BENCHMARKS.md, "RSS per in-flight run").
func (r *Runner) Run(ctx context.Context, spec *Spec) (*Outcome, error) {
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	st := newRunState(r, spec)
	st.log = tracing.Logger(ctx, st.log)
	// base is cut when a cancelled run's grace runs out.
	base, stopBase := context.WithCancelCause(ctx)
	defer stopBase(nil)
	st.stopBase = stopBase
	phaseCtx, cancel := base, context.CancelFunc(func() {})
	if spec.Timeout > 0 {
		phaseCtx, cancel = context.WithTimeoutCause(base, spec.Timeout, errPhaseTimeout)
	}
	defer cancel()
	spec.Control.attach(st.poke)
	defer spec.Control.attach(nil)
	defer st.closeStream()
	defer st.stopGrace()

	// The run is got going (or found) first; the follow, where the
	// goroutine spends the run, starts from this shallow frame.
	res, err := st.start(phaseCtx)
	if err == nil && res == nil {
		res, err = st.followEvents(phaseCtx)
	}
	return st.end(ctx, base, phaseCtx, res, err)
}

// start is run, with the Result by pointer: nil (and no error) when the
// run is to be followed. Not inlined: its Result would sit in Run's frame,
// which stays on the stack for the whole follow.
//
//go:noinline
func (st *runState) start(ctx context.Context) (*schemas.Result, error) {
	res, err := st.run(ctx)
	if err == nil && st.followNext {
		st.followNext = false
		return nil, nil
	}
	return &res, err
}

// end turns how the phase went into Run's answer.
func (st *runState) end(ctx, base, phaseCtx context.Context, res *schemas.Result, err error) (*Outcome, error) {
	if err != nil && ctx.Err() == nil && context.Cause(base) == nil && context.Cause(phaseCtx) == errPhaseTimeout {
		var r schemas.Result
		r, err = st.afterTimeout(base)
		res = &r
	}
	if err == nil {
		o := st.outcome(st.finalize(ctx, *res))
		return &o, nil
	}
	st.closeStream()
	switch {
	case ctx.Err() != nil:
		return nil, &CursorError{Cursor: st.cursor(), Err: fmt.Errorf("run interrupted: %w", context.Cause(ctx))}
	case context.Cause(base) == errCancelUnconfirmed:
		o := st.outcome(st.finalize(ctx, st.unconfirmed()))
		return &o, nil
	}
	st.log.Warn("could not follow the run", "err", err)
	return nil, &CursorError{Cursor: st.cursor(), Err: err}
}

// CancelRun asks the agent server to cancel the run at cur and wakes it, for
// a run nobody follows (see Control for one that is followed). With no RunID
// it cancels the session's active run, if any. A run that is no longer
// active is not an error.
func (r *Runner) CancelRun(ctx context.Context, cur Cursor) error {
	if strings.TrimSpace(cur.SessionID) == "" {
		return errors.New("spawn: cancel run: cursor has no session id")
	}
	runID := cur.RunID
	if runID == "" {
		gs, err := r.c.GetSession(ctx, cur.SessionID)
		if err != nil {
			return fmt.Errorf("cancel run: look up session %s: %w", cur.SessionID, err)
		}
		if !gs.Session.RunStatus.Active() || gs.Session.RunStatus.RunID == "" {
			return nil
		}
		runID = gs.Session.RunStatus.RunID
	}
	err := r.c.Cancel(ctx, cur.SessionID, runID)
	if err != nil && !isNotActive(err) {
		return fmt.Errorf("cancel run %s: %w", runID, err)
	}
	if err == nil {
		if err := r.c.Steer(ctx, cur.SessionID, runID, wakeText); err != nil && !isNotActive(err) {
			return fmt.Errorf("wake cancelled run %s: %w", runID, err)
		}
	}
	return nil
}

// wakeText is the steering message that wakes a cancelled run. The agent
// loop checks its cancel flag before it reads steering text, so the model
// never sees it.
const wakeText = "jetpilot: this run was cancelled"

// Ready reports whether the agent server can take work now: it answers its
// health check, and accepts the token (re-read from the token file when it
// is refused). An unknown session's 404 is the expected answer to the
// authenticated probe.
func (r *Runner) Ready(ctx context.Context) error {
	if _, err := r.c.ReloadToken(); err != nil {
		return err
	}
	if _, err := r.c.Health(ctx); err != nil {
		return fmt.Errorf("agent server health: %w", err)
	}
	_, err := r.c.GetSession(ctx, probeSessionID)
	if err == nil || isSessionLost(err) {
		return nil
	}
	if IsUnauthorized(err) {
		return fmt.Errorf("agent server refuses the token (it makes a new one on every start; update the token file): %w", err)
	}
	return fmt.Errorf("agent server: %w", err)
}

// probeSessionID is a session id no server has: a well-formed UUID, so the
// real server answers 404 rather than a 400 for a malformed id.
const probeSessionID = "00000000-0000-4000-8000-000000000000"

// isNotActive reports an answer that means "that run is not running any
// more" (409 session_not_running, run_mismatch, or any 409).
func isNotActive(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusConflict
}

// isJobRejection reports a permanent rejection of the job's request (400 and
// friends): the job fails with the server's code instead of being retried.
func isJobRejection(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.StatusCode {
	case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge:
		return true
	}
	return false
}

func apiErrorCode(err error, fallback string) string {
	var ae *APIError
	if errors.As(err, &ae) && ae.Code != "" {
		return ae.Code
	}
	return fallback
}
