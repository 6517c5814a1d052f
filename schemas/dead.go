package schemas

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// DeadSchemaID is the optional "schema" field of a DeadLetter.
const DeadSchemaID = "jetpilot.dead.v1"

// DeadLetter is a job that failed for good, kept with the reason so an
// operator can inspect and replay it. Published on jetpilot.dead.<job_id>.
//
// Exactly one of Job and Raw holds the message as received: Job when it was
// a JSON object (so it can be re-published as is), Raw otherwise.
type DeadLetter struct {
	Schema string `json:"schema,omitempty"`
	// JobID is "" when the job's id could not be read.
	JobID string `json:"job_id"`
	// Reason is a short code: invalid_job, agent_error, retries_exhausted...
	Reason string `json:"reason"`
	// Error is the human-readable message.
	Error string `json:"error"`
	// Fields are the per-field problems of an invalid job.
	Fields  []FieldError `json:"fields,omitempty"`
	Attempt int          `json:"attempt"`
	Worker  string       `json:"worker"`
	DeadAt  time.Time    `json:"dead_at"`
	// Job is the message as received, when it was a JSON object.
	Job json.RawMessage `json:"job,omitempty"`
	// Raw is the message as received, when it was UTF-8 text but not a
	// JSON object.
	Raw string `json:"raw,omitempty"`
	// RawBase64 is the message as received when it was not UTF-8 (or, with
	// JobTruncated, the start of it), standard base64.
	RawBase64 string `json:"raw_base64,omitempty"`
	// Unreadable: the job's id could not be read; JobID is the name the
	// worker gave it (from the stream sequence).
	Unreadable bool `json:"unreadable,omitempty"`
	// JobTruncated: the message as received did not fit; it cannot be
	// requeued.
	JobTruncated bool              `json:"job_truncated,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
}

// SetJob stores the message exactly as received: in Job when data is one
// valid JSON object, in Raw when it is other UTF-8 text, else in RawBase64.
func (d *DeadLetter) SetJob(data []byte) {
	d.Job, d.Raw, d.RawBase64 = nil, "", ""
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{' && utf8.Valid(trimmed) && json.Valid(trimmed):
		d.Job = json.RawMessage(bytes.Clone(trimmed))
	case utf8.Valid(data):
		d.Raw = string(data)
	default:
		d.SetRawBase64(data)
	}
}

// SetRawBase64 stores data as RawBase64.
func (d *DeadLetter) SetRawBase64(data []byte) {
	d.RawBase64 = base64.StdEncoding.EncodeToString(data)
}

// Received is the message as received, from whichever field holds it
// (the start of it when JobTruncated).
func (d *DeadLetter) Received() []byte {
	switch {
	case len(d.Job) > 0:
		return d.Job
	case d.RawBase64 != "":
		b, err := base64.StdEncoding.DecodeString(d.RawBase64)
		if err == nil {
			return b
		}
	}
	return []byte(d.Raw)
}
