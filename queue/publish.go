package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// ResultMsgID is the Nats-Msg-Id of a job's result in phase phase
// ("<job_id>:<phase>"; the phase counts the job's pauses). A result
// republished after a redelivery carries the same id, so JetStream drops it.
func ResultMsgID(jobID string, phase int) string {
	return jobID + ":" + strconv.Itoa(phase)
}

// DeadMsgID is the Nats-Msg-Id of a dead letter: "<job_id>:dead", or, when
// the job id could not be read (it is "" or Unreadable), "raw:" and the
// SHA-256 of the message as received, so the same unreadable message
// dead-letters once and never clashes with a real job's dead letter.
func DeadMsgID(dl schemas.DeadLetter) string {
	if dl.Unreadable && dl.JobID != "" {
		return "~" + dl.JobID + ":dead" // '~' is in no job id
	}
	if dl.JobID != "" {
		return dl.JobID + ":dead"
	}
	h := sha256.New()
	if len(dl.Job) > 0 {
		h.Write(dl.Job)
	} else {
		h.Write([]byte(dl.Raw))
	}
	return "raw:" + hex.EncodeToString(h.Sum(nil))
}

// PublishResult publishes res on ResultSubject(res.JobID) with Nats-Msg-Id
// ResultMsgID(res.JobID, phase) and waits for the stream's ack. A duplicate
// is not an error: the returned PubAck says Duplicate.
func PublishResult(ctx context.Context, js jetstream.JetStream, cfg Config, res schemas.Result, phase int) (*jetstream.PubAck, error) {
	if phase < 0 {
		return nil, fmt.Errorf("publish result for job %s: phase must not be negative, got %d", res.JobID, phase)
	}
	return PublishResultAs(ctx, js, cfg, res, ResultMsgID(res.JobID, phase))
}

// PublishResultAs is PublishResult with the Nats-Msg-Id msgID: for the
// result of a message whose job id could not be read (named after its
// stream sequence), so it can never be taken for a duplicate of a real
// job's result under the same name.
func PublishResultAs(ctx context.Context, js jetstream.JetStream, cfg Config, res schemas.Result, msgID string) (*jetstream.PubAck, error) {
	if err := ValidateJobID(res.JobID); err != nil {
		return nil, fmt.Errorf("publish result: %w", err)
	}
	if res.Status == "" {
		return nil, fmt.Errorf("publish result for job %s: status is empty", res.JobID)
	}
	data, err := FitResult(res, PayloadLimit(js))
	if err != nil {
		return nil, fmt.Errorf("publish result for job %s: encode: %w", res.JobID, err)
	}
	ack, err := publishData(ctx, js, cfg.ResultsStream(), cfg.ResultSubject(res.JobID), msgID, data)
	if err != nil {
		return nil, fmt.Errorf("publish result for job %s (%s): %w", res.JobID, msgID, err)
	}
	return ack, nil
}

// PublishApproval publishes req on ApprovalSubject(req.JobID) with
// Nats-Msg-Id = req.ApprovalID and waits for the ack.
func PublishApproval(ctx context.Context, js jetstream.JetStream, cfg Config, req schemas.ApprovalRequest) (*jetstream.PubAck, error) {
	if err := ValidateJobID(req.JobID); err != nil {
		return nil, fmt.Errorf("publish approval: %w", err)
	}
	if req.ApprovalID == "" {
		return nil, fmt.Errorf("publish approval for job %s: approval id is empty", req.JobID)
	}
	data, err := FitApproval(req, PayloadLimit(js))
	if err != nil {
		return nil, fmt.Errorf("publish approval %s: %w", req.ApprovalID, err)
	}
	ack, err := publishData(ctx, js, cfg.ApprovalsStream(), cfg.ApprovalSubject(req.JobID), req.ApprovalID, data)
	if err != nil {
		return nil, fmt.Errorf("publish approval %s for job %s: %w", req.ApprovalID, req.JobID, err)
	}
	return ack, nil
}

// PublishDecision publishes d on DecisionSubject(d.JobID) and waits for the
// ack. Decisions carry no Nats-Msg-Id: a repeated decision is answered by
// the worker (settled approval), not silently dropped.
func PublishDecision(ctx context.Context, js jetstream.JetStream, cfg Config, d schemas.Decision) (*jetstream.PubAck, error) {
	if err := ValidateJobID(d.JobID); err != nil {
		return nil, fmt.Errorf("publish decision: %w", err)
	}
	if d.ApprovalID == "" {
		return nil, fmt.Errorf("publish decision for job %s: approval id is empty", d.JobID)
	}
	ack, err := publishJSON(ctx, js, cfg.DecisionsStream(), cfg.DecisionSubject(d.JobID), "", d)
	if err != nil {
		return nil, fmt.Errorf("publish decision for approval %s of job %s: %w", d.ApprovalID, d.JobID, err)
	}
	return ack, nil
}

// PublishEvent publishes ev on EventSubject(ev.JobID) and waits for the ack.
// Events carry no Nats-Msg-Id: they are best-effort progress, and Seq lets
// readers spot gaps.
func PublishEvent(ctx context.Context, js jetstream.JetStream, cfg Config, ev schemas.Event) (*jetstream.PubAck, error) {
	if err := ValidateJobID(ev.JobID); err != nil {
		return nil, fmt.Errorf("publish event: %w", err)
	}
	data, err := FitEvent(ev, PayloadLimit(js))
	if err != nil {
		return nil, fmt.Errorf("publish %s event %d for job %s: %w", ev.Type, ev.Seq, ev.JobID, err)
	}
	ack, err := publishData(ctx, js, cfg.EventsStream(), cfg.EventSubject(ev.JobID), "", data)
	if err != nil {
		return nil, fmt.Errorf("publish %s event %d for job %s: %w", ev.Type, ev.Seq, ev.JobID, err)
	}
	return ack, nil
}

// PublishDead publishes dl on DeadSubject(dl.JobID) (DeadSubject(UnknownJobID)
// when the id could not be read) with Nats-Msg-Id DeadMsgID(dl), and waits
// for the ack.
func PublishDead(ctx context.Context, js jetstream.JetStream, cfg Config, dl schemas.DeadLetter) (*jetstream.PubAck, error) {
	subjectID := UnknownJobID
	if dl.JobID != "" {
		if err := ValidateJobID(dl.JobID); err != nil {
			return nil, fmt.Errorf("publish dead letter: %w", err)
		}
		subjectID = dl.JobID
	}
	data, err := FitDead(dl, PayloadLimit(js))
	if err != nil {
		return nil, fmt.Errorf("publish dead letter for job %q: encode: %w", dl.JobID, err)
	}
	ack, err := publishData(ctx, js, cfg.DeadStream(), cfg.DeadSubject(subjectID), DeadMsgID(dl), data)
	if err != nil {
		return nil, fmt.Errorf("publish dead letter for job %q: %w", dl.JobID, err)
	}
	return ack, nil
}

// publishJSON marshals v and publishes it on subject, expecting stream so a
// missing or misconfigured stream is an error rather than a lost message.
// msgID "" publishes without a Nats-Msg-Id.
func publishJSON(ctx context.Context, js jetstream.JetStream, stream, subject, msgID string, v any) (*jetstream.PubAck, error) {
	data, err := Encode(v)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	if limit := PayloadLimit(js); len(data) > limit {
		return nil, fmt.Errorf("%w: %d bytes encoded, over the %d a message may hold", ErrTooLarge, len(data), limit)
	}
	return publishData(ctx, js, stream, subject, msgID, data)
}

// ErrTooLarge: a message does not fit the connection's MaxPayload.
var ErrTooLarge = errors.New("message too large")

func publishData(ctx context.Context, js jetstream.JetStream, stream, subject, msgID string, data []byte) (*jetstream.PubAck, error) {
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(stream)}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	// The trace context of ctx (the job's) rides along as traceparent.
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: tracing.Header(ctx)}, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return nil, fmt.Errorf("publish to %s: no stream answered (has `jetpilot setup` created stream %s?): %w", subject, stream, err)
		}
		return nil, fmt.Errorf("publish to %s: %w", subject, ExplainStreamFull(stream, err))
	}
	return ack, nil
}

// LastEventSeq is the seq of the last event on the job's events subject and
// its stream sequence; 0, 0 when there is none (never published, or
// expired). events is the EVENTS stream, looked up once by the caller.
func LastEventSeq(ctx context.Context, events jetstream.Stream, cfg Config, jobID string) (seq, streamSeq uint64, err error) {
	m, err := events.GetLastMsgForSubject(ctx, cfg.EventSubject(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("last event of job %s: %w", jobID, err)
	}
	var ev struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return 0, m.Sequence, nil // not ours to read: the next seq starts after the sequence
	}
	return ev.Seq, m.Sequence, nil
}

// PublishEventAfter publishes ev only if the subject's last message is
// still at stream sequence last (0: the subject has none), so two
// publishers outside a phase cannot give two events one seq. A rival
// publish makes it fail with an error IsWrongLastSequence reports.
func PublishEventAfter(ctx context.Context, js jetstream.JetStream, cfg Config, ev schemas.Event, last uint64) (*jetstream.PubAck, error) {
	if err := ValidateJobID(ev.JobID); err != nil {
		return nil, fmt.Errorf("publish event: %w", err)
	}
	data, err := FitEvent(ev, PayloadLimit(js))
	if err != nil {
		return nil, fmt.Errorf("publish %s event %d for job %s: %w", ev.Type, ev.Seq, ev.JobID, err)
	}
	ack, err := js.Publish(ctx, cfg.EventSubject(ev.JobID), data, jetstream.WithExpectLastSequencePerSubject(last))
	if err != nil {
		return nil, fmt.Errorf("publish %s event %d for job %s: %w", ev.Type, ev.Seq, ev.JobID, err)
	}
	return ack, nil
}

// IsWrongLastSequence reports whether a publish was refused because the
// subject's last sequence was not the one expected.
func IsWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
