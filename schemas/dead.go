package schemas

import (
	"bytes"
	"encoding/json"
	"strings"
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
	// Raw is the message as received, when it was not a JSON object.
	// Bytes that are not UTF-8 are replaced by U+FFFD.
	Raw      string            `json:"raw,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// SetJob stores the message as received: in Job when data is one valid JSON
// object in valid UTF-8, else in Raw. It keeps the dead letter publishable whatever data is.
func (d *DeadLetter) SetJob(data []byte) {
	d.Job, d.Raw = nil, ""
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' && utf8.Valid(trimmed) && json.Valid(trimmed) {
		d.Job = json.RawMessage(bytes.Clone(trimmed))
		return
	}
	d.Raw = strings.ToValidUTF8(string(data), "\uFFFD")
}
