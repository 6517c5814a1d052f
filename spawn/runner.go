package spawn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

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
	if o.EndedReplayWait <= 0 {
		o.EndedReplayWait = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

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
}

// Spec is one job phase to run.
type Spec struct {
	Job schemas.Job
	// Attempt is the delivery attempt, copied to the Result.
	Attempt int
	// Timeout is the whole-phase timeout; 0 = none. When it elapses the run
	// is cancelled on the server and the Result is timed_out.
	Timeout time.Duration
	// WorkerAllowed is the worker's --allowed-tools (empty: every tool).
	WorkerAllowed []string
	// Resume follows an existing session/run (re-attach after a crash or a
	// redelivery, or continue after a pause was decided) instead of starting
	// one. A cursor with only SessionID starts the run if the session never
	// got one.
	Resume *Cursor
	// OnCursor is called when the session is created, when the run id is
	// known, as events advance (at most every RunnerOptions.CursorInterval)
	// and on pause or end, so the caller can persist it. Called from Run's
	// goroutine; it should not block for long.
	OnCursor func(Cursor)
	// OnEvent receives every event of this run, in order and without
	// duplicates, for live progress. May be nil. Called from Run's goroutine.
	OnEvent func(Event)
}

// Idempotency keys: the same on every attempt of a job, so a redelivered job
// never creates a second session or starts a second run while the server
// remembers the key.
func sessionKey(jobID string) string { return "jetpilot-" + jobID + "-session" }
func runKey(jobID string) string     { return "jetpilot-" + jobID + "-run" }

var errPhaseTimeout = errors.New("job phase timed out")

func validateSpec(spec Spec) error {
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
	if strings.TrimSpace(spec.Job.Prompt) == "" {
		return fmt.Errorf("spawn: run job %s: prompt is required", spec.Job.ID)
	}
	return nil
}

// Run runs one job phase and returns its Result: completed, failed,
// cancelled, timed_out, or paused (tool calls wait for a human; resume with
// the Result's session and run ids and the last cursor reported).
//
// It returns an error only when it could not get a run going or could not
// follow it: a *CursorError carrying the cursor reached, so a retry passes it
// as Spec.Resume and re-attaches instead of starting again. IsTransient tells
// whether retrying may help. A permanent rejection by the agent server
// (invalid_model, invalid_context, ...) is a failed Result, not an error.
// Result.Stdout is the text streamed during this phase; the final Result of
// a resumed phase carries the run's whole text, rebuilt from the session's
// messages. Result.ToolCalls counts the calls the policy settled during this phase;
// decisions a human sends through Client.Decide are the caller's to count.
//
// When ctx is cancelled (worker shutdown) Run returns ctx's cause wrapped in a
// *CursorError and leaves the run going on the server: use CancelRun to stop
// it.
func (r *Runner) Run(ctx context.Context, spec Spec) (schemas.Result, error) {
	if err := validateSpec(spec); err != nil {
		return schemas.Result{}, err
	}
	st := newRunState(r, spec)
	phaseCtx, cancel := ctx, context.CancelFunc(func() {})
	if spec.Timeout > 0 {
		phaseCtx, cancel = context.WithTimeoutCause(ctx, spec.Timeout, errPhaseTimeout)
	}
	defer cancel()
	defer st.closeStream()

	res, err := st.run(phaseCtx)
	if err == nil {
		return st.finalize(ctx, res), nil
	}
	st.closeStream()
	switch {
	case ctx.Err() != nil:
		return schemas.Result{}, &CursorError{Cursor: st.cursor(), Err: fmt.Errorf("run interrupted: %w", context.Cause(ctx))}
	case phaseCtx.Err() != nil:
		return st.timedOut(ctx), nil
	}
	st.log.Warn("could not follow the run", "err", err)
	return schemas.Result{}, &CursorError{Cursor: st.cursor(), Err: err}
}

// CancelRun asks the agent server to cancel the run at cur. With no RunID it
// cancels the session's active run, if any. A run that is no longer active is
// not an error.
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
	if err == nil || isNotActive(err) {
		return nil
	}
	return fmt.Errorf("cancel run %s: %w", runID, err)
}

// Decide sends a human's decisions on the pending tool calls of the run at
// cur (with no RunID: the session's active run). The run then goes on; follow
// it with Run and Spec.Resume = cur. Errors are the client's: transient ones
// are worth retrying, a 409 means the run no longer waits (it ended or was
// cancelled).
func (r *Runner) Decide(ctx context.Context, cur Cursor, decisions map[string]schemas.ToolDecision) error {
	if strings.TrimSpace(cur.SessionID) == "" {
		return errors.New("spawn: decide: cursor has no session id")
	}
	runID := cur.RunID
	if runID == "" {
		gs, err := r.c.GetSession(ctx, cur.SessionID)
		if err != nil {
			return fmt.Errorf("decide: look up session %s: %w", cur.SessionID, err)
		}
		if !gs.Session.RunStatus.Active() || gs.Session.RunStatus.RunID == "" {
			return &APIError{Op: "decide", StatusCode: http.StatusConflict, Code: CodeSessionNotRunning,
				Message: "session " + cur.SessionID + " has no active run"}
		}
		runID = gs.Session.RunStatus.RunID
	}
	if err := r.c.Decide(ctx, cur.SessionID, runID, decisions); err != nil {
		return fmt.Errorf("decide on run %s: %w", runID, err)
	}
	return nil
}

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
