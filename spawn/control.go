package spawn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Control lets the caller of Runner.Run stop the run it follows. The agent
// server's cancel only sets a flag its agent loop checks when it next wakes
// (AGENT_SERVER_API.md "Cancel"): a run waiting for tool decisions, or in an
// LLM call, goes on until something wakes it. So Cancel does not just send
// the cancel request: the runner sends it, wakes the run with a steering
// message, follows the run to its end, and gives the server
// RunnerOptions.CancelGrace to confirm before it reports the run cancelled
// anyway (with a warning that says so).
//
// A Control may be cancelled before Run starts (a paused job being
// cancelled) or at any time while it runs; Cancel is safe to call from any
// goroutine and more than once.
type Control struct {
	mu        sync.Mutex
	requested bool
	poke      func()      // set while a Run follows: interrupts its blocked read
	steers    []*steerReq // steering messages waiting for the runner to send them
}

// steerReq is one Steer call waiting for the runner.
type steerReq struct {
	text string
	done chan error // buffered: the runner never blocks on it
}

// maxQueuedSteers bounds the steering messages waiting for one run.
const maxQueuedSteers = 8

// ErrNotSteerable is returned by Control.Steer when the run cannot take
// guidance now: nothing follows it, it has not started yet, it waits for
// a human's decision (a steering message would skip its pending calls),
// or it is being cancelled or has ended.
var ErrNotSteerable = errors.New("the run is not running")

// Steer sends text into the followed run as a steering message, which the
// agent reads before its next step (AGENT_SERVER_API.md "type"). It returns
// once the runner has sent it, or with why it could not: ErrNotSteerable
// (wrapped with the reason), the server's error, or ctx's.
func (c *Control) Steer(ctx context.Context, text string) error {
	if c == nil {
		return fmt.Errorf("%w: no run is followed", ErrNotSteerable)
	}
	req := &steerReq{text: text, done: make(chan error, 1)}
	c.mu.Lock()
	switch {
	case c.poke == nil:
		c.mu.Unlock()
		return fmt.Errorf("%w: no run is followed here", ErrNotSteerable)
	case c.requested:
		c.mu.Unlock()
		return fmt.Errorf("%w: it is being cancelled", ErrNotSteerable)
	case len(c.steers) >= maxQueuedSteers:
		c.mu.Unlock()
		return fmt.Errorf("%d steering messages already wait to be sent to this run; try again", maxQueuedSteers)
	}
	c.steers = append(c.steers, req)
	poke := c.poke
	c.mu.Unlock()
	poke()
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
	}
	c.mu.Lock()
	queued := slices.Contains(c.steers, req)
	if queued {
		c.steers = slices.DeleteFunc(c.steers, func(r *steerReq) bool { return r == req })
	}
	c.mu.Unlock()
	if queued {
		// Never sent: the run did not reach a point where guidance can
		// be given safely (see runState.steerOK) in time.
		return fmt.Errorf("%w: the agent did not reach a point where guidance can be given safely (it is thinking, or running one long tool) in time; try again", ErrNotSteerable)
	}
	// The runner is sending it: its answer comes within its own bound.
	return <-req.done
}

// takeSteers hands the waiting steering messages to the runner.
func (c *Control) takeSteers() []*steerReq {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.steers
	c.steers = nil
	return out
}

// NewControl returns a Control with no cancel requested.
func NewControl() *Control { return &Control{} }

// Cancel asks for the run to be cancelled.
func (c *Control) Cancel() {
	c.mu.Lock()
	if c.requested {
		c.mu.Unlock()
		return
	}
	c.requested = true
	poke := c.poke
	c.mu.Unlock()
	if poke != nil {
		poke()
	}
}

// Requested reports whether Cancel was called.
func (c *Control) Requested() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requested
}

func (c *Control) attach(poke func()) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.poke = poke
	var left []*steerReq
	if poke == nil {
		left, c.steers = c.steers, nil
	}
	c.mu.Unlock()
	for _, r := range left {
		r.done <- fmt.Errorf("%w: the run's phase ended before it was sent", ErrNotSteerable)
	}
}

// Outcome is what Runner.Run returns: the phase's Result, and for a paused
// phase the policy's verdicts on the other calls of the same proposal.
//
// Those verdicts are held, not sent: a decision that reaches the agent
// server while another call of its batch executes is never applied to that
// batch, and the run then waits forever (AGENT_SERVER_API.md "Tool
// decisions"). So the caller keeps Held with the pause and sends it in the
// one request that carries the human's answer (Spec.Decisions).
type Outcome struct {
	schemas.Result
	// Held are the policy's decisions on the calls of the paused proposal
	// that do not wait for a human; nil unless Status is paused.
	Held map[string]schemas.ToolDecision
	// WholeText reports whether Result.Stdout is the run's whole text (the
	// phase followed the run from its start, or the text was rebuilt from
	// the session's messages); otherwise it is this phase's text only, and
	// the caller puts the earlier phases' text before it.
	WholeText bool
	// UsedTokens is what the job has used so far, its earlier phases
	// (Spec.UsedTokens) included: a later phase's Spec.UsedTokens.
	UsedTokens int64
}

// maxDecidedIDs bounds the tool call ids a Cursor carries. Only the calls of
// the latest proposals can come back (a replay of an undecided cursor, or the
// pending list, which holds one batch), so the oldest ids can go.
const maxDecidedIDs = 256

// addDecided appends ids to list, without duplicates, keeping the newest
// maxDecidedIDs.
func addDecided(list []string, ids ...string) []string {
	for _, id := range ids {
		if !slices.Contains(list, id) {
			list = append(list, id)
		}
	}
	if over := len(list) - maxDecidedIDs; over > 0 {
		list = slices.Delete(list, 0, over)
	}
	return list
}

// decideKey is the Idempotency-Key of the one decision request of a batch:
// derived from the job, the run and the calls decided, so a transport retry,
// a reconnect or another worker taking the job over replays the server's
// stored answer instead of deciding the calls a second time (which kills the
// run without an event).
func decideKey(jobID, runID string, decisions map[string]schemas.ToolDecision) string {
	h := sha256.New()
	h.Write([]byte(runID))
	for _, id := range slices.Sorted(maps.Keys(decisions)) {
		h.Write([]byte{0})
		h.Write([]byte(id))
	}
	return "jetpilot-" + jobID + "-decide-" + hex.EncodeToString(h.Sum(nil)[:12])
}

// WireDecisions is decisions as the agent server must receive them. The
// server ignores the content of a reject (the model always reads "Tool call
// rejected by user"), so a reject with a reason is sent as custom_result
// with the reason as the tool's result: the model learns why, while jetpilot
// still counts and reports the call as rejected.
func WireDecisions(decisions map[string]schemas.ToolDecision) map[string]schemas.ToolDecision {
	out := make(map[string]schemas.ToolDecision, len(decisions))
	for id, d := range decisions {
		if d.Action == schemas.ActionReject && d.Content != "" {
			d.Action = schemas.ActionCustomResult
		}
		out[id] = d
	}
	return out
}
