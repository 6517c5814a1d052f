package queue

import (
	"fmt"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Every message jetpilot publishes, and every run record it writes, goes
// through one encoder: JSON without HTML escaping (json.Marshal writes each
// <, > and & as six bytes, so a valid job full of them could grow past the
// limit), measured as encoded against the connection's MaxPayload, never a
// constant. What does not fit is shrunk in a fixed order, with a warning
// that says what was cut:
//
//  1. the agent's text (stdout), keeping its end, where the conclusion is;
//  2. stderr and the error message;
//  3. pending calls' arguments (the calls are marked arguments_truncated and
//     can only be denied);
//  4. metadata;
//  5. a dead letter's copy of the job (base64 when it is not UTF-8; cut and
//     marked job_truncated as a last resort);
//
// and as a last resort a result is replaced by a minimal one, which always
// fits.

// Caps that hold whatever the message limit is.
const (
	// MaxErrorBytes caps stderr and an error's message.
	MaxErrorBytes = 8 << 10
	// MaxArgumentBytes caps one pending call's arguments as published.
	MaxArgumentBytes = 16 << 10
	// headerRoom is kept free of the payload limit for the headers a
	// publish carries (Nats-Msg-Id, Nats-Expected-Stream, TTL).
	headerRoom = 1 << 10
)

// Encode is v as JSON without HTML escaping (schemas.Encode).
func Encode(v any) ([]byte, error) { return schemas.Encode(v) }

// PayloadLimit is the largest message body js's connection may publish,
// less room for headers.
func PayloadLimit(js jetstream.JetStream) int {
	mp := int(js.Conn().MaxPayload())
	if mp <= 0 {
		mp = 1 << 20 // not connected yet: NATS's default
	}
	return max(mp-headerRoom, 4<<10)
}

// KeepTail keeps the last max bytes of s, on a UTF-8 boundary (the end of
// an agent's text is where its conclusion is); it reports how many bytes it
// dropped.
func KeepTail(s string, max int) (string, int) { return cutHead(s, max) }

func cutHead(s string, max int) (string, int) {
	if max < 0 {
		max = 0
	}
	if len(s) <= max {
		return s, 0
	}
	cut := len(s) - max
	for cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut++
	}
	return s[cut:], cut
}

// cutTail keeps the first max bytes of s, on a UTF-8 boundary.
func cutTail(s string, max int) (string, int) {
	if max < 0 {
		max = 0
	}
	if len(s) <= max {
		return s, 0
	}
	end := max
	for end > 0 && !utf8.RuneStart(s[end]) {
		end--
	}
	return s[:end], len(s) - end
}

// CapError shortens stderr-like text to MaxErrorBytes, saying so.
func CapError(s string) string {
	if len(s) <= MaxErrorBytes {
		return s
	}
	head, dropped := cutTail(s, MaxErrorBytes)
	return fmt.Sprintf("%s… [%d more bytes cut by jetpilot]", head, dropped)
}

// CapArguments shortens a pending call's arguments to MaxArgumentBytes (a
// JSON string holding their start and a note) and marks the call.
func CapArguments(c *schemas.ToolCall, max int) {
	if len(c.Arguments) <= max {
		return
	}
	head, _ := cutTail(string(c.Arguments), max)
	note, _ := Encode(fmt.Sprintf("%s… [truncated by jetpilot: %d bytes of arguments]", head, len(c.Arguments)))
	c.Arguments = note
	c.ArgumentsTruncated = true
}

// cappedCalls is a copy of calls with every call's arguments capped at max.
func cappedCalls(calls []schemas.ToolCall, max int) []schemas.ToolCall {
	out := make([]schemas.ToolCall, len(calls))
	copy(out, calls)
	for i := range out {
		CapArguments(&out[i], max)
	}
	return out
}

// FitResult encodes res to at most limit bytes, shrinking it in the
// documented order; the returned bytes always fit (the last resort is a
// minimal result).
func FitResult(res schemas.Result, limit int) ([]byte, error) {
	res.Stderr = CapError(res.Stderr)
	if res.Error != nil {
		e := *res.Error
		e.Message = CapError(e.Message)
		res.Error = &e
	}
	data, err := Encode(res)
	if err != nil || len(data) <= limit {
		return data, err
	}
	// 1. The text, keeping its end.
	if over := len(data) - limit; res.Stdout != "" {
		kept, dropped := cutHead(res.Stdout, len(res.Stdout)-over-256)
		res.Stdout = kept
		res.Warnings = append(res.Warnings, fmt.Sprintf("stdout cut to fit a message: the first %d bytes were dropped; the session's messages have the whole text", dropped))
		if data, err = Encode(res); err != nil || len(data) <= limit {
			return data, err
		}
		res.Stdout = ""
		res.Warnings = append(res.Warnings, "stdout dropped to fit a message")
	}
	// 2. The error text.
	res.Stderr, _ = cutTail(res.Stderr, 1<<10)
	if res.Error != nil {
		res.Error.Message, _ = cutTail(res.Error.Message, 1<<10)
		res.Error.Fields = nil
	}
	if data, err = Encode(res); err != nil || len(data) <= limit {
		return data, err
	}
	// 3. Pending calls' arguments.
	if res.PauseReason != nil && len(res.PauseReason.PendingToolCalls) > 0 {
		pr := *res.PauseReason
		pr.PendingToolCalls = cappedCalls(pr.PendingToolCalls, 256)
		res.PauseReason = &pr
		res.Warnings = append(res.Warnings, "pending calls' arguments cut to fit a message (those calls can only be denied)")
		if data, err = Encode(res); err != nil || len(data) <= limit {
			return data, err
		}
	}
	// 4. Metadata.
	if len(res.Metadata) > 0 {
		res.Metadata = nil
		res.Warnings = append(res.Warnings, "metadata dropped to fit a message")
		if data, err = Encode(res); err != nil || len(data) <= limit {
			return data, err
		}
	}
	return Encode(MinimalResult(res))
}

// MinimalResult is res reduced to what always fits a message: the job, its
// status and exit code, a short error, where it ran, and a warning saying
// the rest was cut.
func MinimalResult(res schemas.Result) schemas.Result {
	m := schemas.Result{
		Schema: res.Schema, JobID: res.JobID, SessionID: res.SessionID, RunID: res.RunID,
		Attempt: res.Attempt, Worker: res.Worker, StartedAt: res.StartedAt, FinishedAt: res.FinishedAt,
		DurationMS: res.DurationMS, DeadLettered: res.DeadLettered, ToolCalls: res.ToolCalls,
		StopReason: res.StopReason, Usage: res.Usage, TotalTurns: res.TotalTurns, JobDigest: res.JobDigest,
		Warnings: []string{"the result did not fit a message and was cut to its minimum; the session has the agent's text"},
	}
	m.SetStatus(res.Status)
	if res.Error != nil {
		msg, _ := cutTail(res.Error.Message, 512)
		m.Error = &schemas.Error{Code: res.Error.Code, Message: msg}
		m.Stderr = msg
	}
	if res.PauseReason != nil {
		// The calls' ids are what a decision needs; their arguments are in
		// the approval request (or cut there too).
		pr := schemas.PauseReason{Type: res.PauseReason.Type}
		for _, c := range res.PauseReason.PendingToolCalls {
			pr.PendingToolCalls = append(pr.PendingToolCalls, schemas.ToolCall{ID: c.ID, Name: c.Name, ArgumentsTruncated: true})
		}
		m.PauseReason = &pr
		m.ResumeHint = res.ResumeHint
	}
	return m
}

// FitApproval encodes req to at most limit bytes: arguments first, then
// metadata. An approval whose calls alone cannot fit is an error (the run
// then cannot be paused, and the calls are rejected instead).
func FitApproval(req schemas.ApprovalRequest, limit int) ([]byte, error) {
	data, err := Encode(req)
	if err != nil || len(data) <= limit {
		return data, err
	}
	req.PendingToolCalls = cappedCalls(req.PendingToolCalls, 256)
	if data, err = Encode(req); err != nil || len(data) <= limit {
		return data, err
	}
	req.Metadata = nil
	if data, err = Encode(req); err != nil || len(data) <= limit {
		return data, err
	}
	return nil, fmt.Errorf("approval request of job %s: %d pending calls do not fit a message of %d bytes", req.JobID, len(req.PendingToolCalls), limit)
}

// FitDead encodes dl to at most limit bytes: the error text, metadata, then
// the job as received (base64 when it is not UTF-8), cut and marked
// job_truncated as a last resort (a truncated job cannot be requeued).
func FitDead(dl schemas.DeadLetter, limit int) ([]byte, error) {
	dl.Error = CapError(dl.Error)
	data, err := Encode(dl)
	if err != nil || len(data) <= limit {
		return data, err
	}
	dl.Fields = nil
	dl.Metadata = nil
	if data, err = Encode(dl); err != nil || len(data) <= limit {
		return data, err
	}
	// The job itself, as received: as base64 when its JSON escaping is what
	// makes it too big (control characters take six bytes each), else cut.
	raw := dl.Received()
	if dl.RawBase64 == "" && !dl.JobTruncated {
		b64 := dl
		b64.Job, b64.Raw = nil, ""
		b64.SetRawBase64(raw)
		if data, err = Encode(b64); err != nil || len(data) <= limit {
			return data, err
		}
	}
	dl.Job, dl.Raw, dl.RawBase64 = nil, "", ""
	dl.JobTruncated = true
	base, err := Encode(dl)
	if err != nil {
		return nil, err
	}
	room := limit - len(base) - 64
	keep := max(room*3/4, 0) // base64 grows 4/3
	dl.SetRawBase64(raw[:min(keep, len(raw))])
	return Encode(dl)
}

// fitRecord encodes a run record to at most limit bytes: the earlier
// phases' text first (keeping its end), then pending calls' arguments.
func fitRecord(rec RunRecord, limit int) ([]byte, error) {
	data, err := Encode(rec)
	if err != nil || len(data) <= limit {
		return data, err
	}
	if over := len(data) - limit; rec.Stdout != "" {
		rec.Stdout, _ = cutHead(rec.Stdout, len(rec.Stdout)-over-256)
		if data, err = Encode(rec); err != nil || len(data) <= limit {
			return data, err
		}
		rec.Stdout = ""
	}
	rec.Pending = cappedCalls(rec.Pending, 256)
	rec.DecidedPending = cappedCalls(rec.DecidedPending, 256)
	if data, err = Encode(rec); err != nil || len(data) <= limit {
		return data, err
	}
	return nil, fmt.Errorf("run record of job %s is %d bytes encoded, over the %d a message may hold", rec.JobID, len(data), limit)
}

// FitEvent encodes ev to at most limit bytes: its text (keeping the end),
// the error's message and fields, the tool's arguments and result, then
// metadata. Ids a hostile message supplied (an approval id) are the
// caller's to cap (CapID).
func FitEvent(ev schemas.Event, limit int) ([]byte, error) {
	if ev.Error != nil {
		e := *ev.Error
		e.Message = CapError(e.Message)
		ev.Error = &e
	}
	data, err := Encode(ev)
	if err != nil || len(data) <= limit {
		return data, err
	}
	if over := len(data) - limit; ev.Text != "" {
		ev.Text, _ = cutHead(ev.Text, len(ev.Text)-over-256)
	}
	if ev.Error != nil {
		ev.Error.Message, _ = cutTail(ev.Error.Message, 1<<10)
		ev.Error.Fields = nil
	}
	if ev.Tool != nil {
		t := *ev.Tool
		t.Result, _ = cutTail(t.Result, 1<<10)
		if len(t.Arguments) > 256 {
			t.Arguments = nil
		}
		ev.Tool = &t
	}
	ev.Metadata = nil
	if data, err = Encode(ev); err != nil || len(data) <= limit {
		return data, err
	}
	return nil, fmt.Errorf("%w: %s event of job %s is %d bytes encoded, over the %d a message may hold", ErrTooLarge, ev.Type, ev.JobID, len(data), limit)
}

// CapID shortens an identifier a message supplied (an approval id, a tool
// call id) for quoting it back in an event or a log line.
func CapID(id string) string {
	if len(id) <= 256 {
		return id
	}
	head, dropped := cutTail(id, 256)
	return fmt.Sprintf("%s… [%d more bytes]", head, dropped)
}
