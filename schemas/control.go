package schemas

import (
	"encoding/json"
	"fmt"
	"time"
)

// Schema ids of the control protocol.
const (
	ControlSchemaID     = "jetpilot.control.v1"
	CancelSchemaID      = "jetpilot.cancel.v1"
	CancelReplySchemaID = "jetpilot.cancel_reply.v1"
)

// Control message kinds.
const (
	// ControlExpiry is an approval's timer: JetStream redelivers it (the
	// worker that gets it early hands it back until it is due), so exactly
	// one worker applies the expiry, whichever holds it then.
	ControlExpiry = "expiry"
	// ControlCancel cancels a paused job: the worker that takes it wakes
	// the run and follows it to its end.
	ControlCancel = "cancel"
)

// Control is a worker's own message about a paused job, on
// jetpilot.control.<job_id> (schema control.v1.json). Only workers publish
// it; its Nats-Msg-Id is "<kind>:<approval_id>".
type Control struct {
	Schema      string    `json:"schema"`
	Kind        string    `json:"kind"`
	JobID       string    `json:"job_id"`
	ApprovalID  string    `json:"approval_id"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	RequestedAt time.Time `json:"requested_at,omitzero"`
}

// DecodeControl parses and validates a control message.
func DecodeControl(data []byte) (Control, error) {
	if err := Validate(SchemaControl, data); err != nil {
		return Control{}, fmt.Errorf("decode control message: %w", err)
	}
	var c Control
	if err := json.Unmarshal(data, &c); err != nil {
		return Control{}, fmt.Errorf("decode control message: %w", err)
	}
	return c, nil
}

// CancelRequest is the body of a request on jetpilot.cancel.<job_id>
// (schema cancel.v1.json); an empty body is one too. The subject names the
// job.
type CancelRequest struct {
	Schema      string `json:"schema,omitempty"`
	JobID       string `json:"job_id,omitempty"`
	RequestedBy string `json:"requested_by,omitempty"`
}

// Outcomes of a CancelReply.
const (
	// CancelCancelling: the run is being cancelled; the job's result follows.
	CancelCancelling = "cancelling"
	// CancelRequested: recorded for the worker that holds or next takes the
	// job.
	CancelRequested = "cancel_requested"
	// Steered: the steering message reached the job's running agent.
	Steered = "steered"
)

// SteerSchemaID is the schema id of a steering request.
const SteerSchemaID = "jetpilot.steer.v1"

// MaxSteerText is the longest steering text, in characters.
const MaxSteerText = 50000

// SteerRequest is the body of a request on jetpilot.steer.<job_id>
// (schema steer.v1.json): guidance for the job's running agent. Signed
// like a decision where the policy requires it (package signing), with
// SentAt then required and recent.
type SteerRequest struct {
	Schema    string     `json:"schema,omitempty"`
	JobID     string     `json:"job_id"`
	Text      string     `json:"text"`
	SteeredBy string     `json:"steered_by,omitempty"`
	SentAt    *time.Time `json:"sent_at,omitempty"`
	Signature *Signature `json:"signature,omitempty"`
}

// DecodeSteer parses and validates a steering request.
func DecodeSteer(data []byte) (SteerRequest, error) {
	if err := Validate(SchemaSteer, data); err != nil {
		return SteerRequest{}, fmt.Errorf("decode steer request: %w", err)
	}
	var s SteerRequest
	if err := json.Unmarshal(data, &s); err != nil {
		return SteerRequest{}, fmt.Errorf("decode steer request: %w", err)
	}
	return s, nil
}

// CancelReply answers a cancel request (schema cancel_reply.v1.json):
// either an Outcome or an Error.
type CancelReply struct {
	Schema  string `json:"schema,omitempty"`
	JobID   string `json:"job_id"`
	Outcome string `json:"outcome,omitempty"`
	Worker  string `json:"worker,omitempty"`
	Error   *Error `json:"error,omitempty"`
}
