package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// Text deltas are coalesced into one text event per textFlushEvery or
// textFlushBytes, whichever comes first: a chat bot wants a few updates a
// second, not one per token.
const (
	textFlushEvery = 250 * time.Millisecond
	textFlushBytes = 1024
)

// liveEvents publishes one job's live progress on jetpilot.events.<job_id>,
// for one phase (a phase's events come from one liveEvents).
// Events are best effort: they are published asynchronously and never slow
// down or fail the run; the Result is the record.
//
// Every event carries the job id; the job's metadata rides only on the
// first event this publisher emits (the phase's opening event: its
// announce, or the first progress event), so a reader joining a phase
// learns it once and a chatty run does not repeat it on every event.
type liveEvents struct {
	js      jetstream.JetStream
	subject string
	jobID   string
	md      map[string]string
	mdSent  bool // the metadata has been published on an event

	mu        sync.Mutex
	seq       uint64
	sessionID string
	runID     string
	text      []byte
	timer     *time.Timer

	// tokens counts each turn's usage (usage_report) in the metrics.
	tokens func(prompt, completion int)
	// trace is the phase's trace context (traceparent), copied onto each event.
	trace nats.Header
}

func (w *Worker) newLiveEvents(jobID string, md map[string]string, seq uint64) *liveEvents {
	return &liveEvents{js: w.js, subject: w.qcfg.EventSubject(jobID), jobID: jobID, md: md, seq: seq}
}

// Seq is the sequence number of the last event published.
func (l *liveEvents) Seq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// emit publishes ev after any buffered text, so events stay in order.
func (l *liveEvents) emit(ev schemas.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
	l.publishLocked(ev)
}

// close publishes buffered text and stops the flush timer.
func (l *liveEvents) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *liveEvents) flushLocked() {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if len(l.text) == 0 {
		return
	}
	text := string(l.text)
	l.text = l.text[:0]
	l.publishLocked(schemas.Event{Type: schemas.EventText, Text: text})
}

func (l *liveEvents) publishLocked(ev schemas.Event) {
	l.seq++
	ev.Schema = schemas.EventSchemaID
	ev.JobID, ev.Seq, ev.Metadata = l.jobID, l.seq, nil
	if !l.mdSent {
		ev.Metadata, l.mdSent = l.md, true
	}
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	if ev.SessionID == "" {
		ev.SessionID = l.sessionID
	}
	if ev.RunID == "" {
		ev.RunID = l.runID
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return
	}
	// Fire and forget: a lost progress event must not cost the run anything.
	// A plain publish, which the events stream stores like any other: no
	// one would read a JetStream ack, so none is asked for (that saves the
	// server an ack message per event and the client its bookkeeping). A
	// slow server still pushes back, through the connection's writes.
	_ = l.js.Conn().PublishMsg(&nats.Msg{Subject: l.subject, Data: data, Header: maps.Clone(l.trace)})
}

// agentEvent turns one agent-server event into live events. Only the
// events that become live events (or count tokens) are decoded, each into
// the fields it uses: the rest (run_started, text_complete, run_completed,
// progress...) are not read at all.
func (l *liveEvents) agentEvent(e spawn.Event) {
	var p agentPayload
	switch e.Name {
	case "text_delta", "turn_started", "turn_completed", "tool_execution_started",
		"tool_execution_completed", "tool_rejected", "retry_attempt", "usage_report":
		if len(e.Payload) > 0 {
			_ = json.Unmarshal(e.Payload, &p)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.runID = e.RunID
	if e.SessionID != "" {
		l.sessionID = e.SessionID
	}
	switch e.Name {
	case "text_delta":
		l.text = append(l.text, p.Delta...)
		if len(l.text) >= textFlushBytes {
			l.flushLocked()
		} else if l.timer == nil {
			l.timer = time.AfterFunc(textFlushEvery, func() {
				l.mu.Lock()
				defer l.mu.Unlock()
				l.flushLocked()
			})
		}
		return
	case "run_started":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventStatus, Status: "running"})
	case "turn_started":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventTurnStarted, Turn: p.Turn})
	case "turn_completed":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventTurnCompleted, Turn: p.Turn})
	case "tool_execution_started":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventToolStarted, Tool: &schemas.EventTool{ID: p.ToolCallID, Name: p.ToolName}})
	case "tool_execution_completed":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventToolCompleted, Tool: &schemas.EventTool{ID: p.ToolCallID, Name: p.ToolName, Result: resultText(p.Result), IsError: p.IsError}})
	case "tool_rejected":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventToolRejected, Tool: &schemas.EventTool{ID: p.ToolCallID, Name: p.ToolName, Reason: p.Reason}})
	case "retry_attempt":
		l.flushLocked()
		l.publishLocked(schemas.Event{Type: schemas.EventRetry, Text: p.Reason})
	case "usage_report":
		if l.tokens != nil {
			l.tokens(p.Usage.PromptTokens, p.Usage.CompletionTokens)
		}
	}
}

// decided publishes what the policy did with one proposed call and which
// rule decided (spawn.Spec.OnDecision).
func (l *liveEvents) decided(call schemas.ToolCall, d policy.Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
	l.publishLocked(schemas.Event{Type: schemas.EventToolDecided, PolicyVersion: d.Verdict.Version,
		Tool: &schemas.EventTool{ID: call.ID, Name: call.Name, Verdict: d.Kind.String(), Rule: d.Verdict.Rule, Reason: d.Content}})
}

// agentPayload holds the payload fields of the agent events turned into live events.
type agentPayload struct {
	Delta      string          `json:"delta"`
	Turn       int             `json:"turn"`
	ToolCallID string          `json:"tool_call_id"`
	ToolName   string          `json:"tool_name"`
	Result     json.RawMessage `json:"result"`
	IsError    bool            `json:"is_error"`
	Reason     string          `json:"reason"`
	Usage      struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// resultText shows a tool result: a JSON string as its text, anything else as JSON.
func resultText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// eventSeq is the seq a phase's events continue from: the record's, or the
// last event on the job's subject when that is later (a refused decision
// published one while the job was paused, or the previous holder's last
// ones were not recorded yet). A new job's events start at 1 without a
// lookup.
func (w *Worker) eventSeq(ctx context.Context, p *phase) uint64 {
	seq := p.run.Record.EventSeq
	if p.run.Stored == "" {
		return seq
	}
	last, _, err := queue.LastEventSeq(ctx, w.eventsStream, w.qcfg, p.job.ID)
	if err != nil {
		p.log.Debug("read the last event's seq; continuing from the record's", "err", err)
	}
	return max(seq, last)
}

// publishJobEvent publishes one event about a job outside a phase (a
// refused decision): through the job's phase when this worker follows it,
// else with the next seq after the subject's last event, published only if
// that is still the last (bounded retries).
func (w *Worker) publishJobEvent(ctx context.Context, ev schemas.Event) error {
	w.activeMu.Lock()
	a := w.active[ev.JobID]
	w.activeMu.Unlock()
	if a != nil && a.events != nil && !a.settling.Load() {
		a.events.emit(ev)
		return nil
	}
	var err error
	wait := 2 * time.Millisecond
	for range publishEventAttempts {
		var last, streamSeq uint64
		last, streamSeq, err = queue.LastEventSeq(ctx, w.eventsStream, w.qcfg, ev.JobID)
		if err != nil {
			return err
		}
		ev.Seq = last + 1
		if _, err = queue.PublishEventAfter(ctx, w.js, w.qcfg, ev, streamSeq); err == nil || !queue.IsWrongLastSequence(err) {
			return err
		}
		// Another publisher took the seq: back off (jittered, so racing
		// workers spread out) and read the last one again.
		if !sleep(ctx, wait/2+rand.N(wait)) {
			return ctx.Err()
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
	return fmt.Errorf("publish %s event for job %s: %d publishers raced for its seq: %w", ev.Type, ev.JobID, publishEventAttempts, err)
}

// publishEventAttempts bounds the tries of an event published outside a
// phase (about 4 s of backing off at most).
const publishEventAttempts = 24
