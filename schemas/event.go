package schemas

import (
	"encoding/json"
	"time"
)

// EventType names what an Event reports.
type EventType string

// Event types. Consumers must ignore types they do not know: new ones may be
// added without a new schema version.
const (
	// EventText carries agent text, coalesced from the agent server's deltas.
	EventText EventType = "text"
	// EventToolStarted: a tool call began executing (Tool.ID, Tool.Name).
	EventToolStarted EventType = "tool_started"
	// EventToolCompleted: a tool call finished (Tool.Result, Tool.IsError).
	EventToolCompleted EventType = "tool_completed"
	// EventToolRejected: a tool call was rejected (Tool.Reason).
	EventToolRejected EventType = "tool_rejected"
	// EventToolDecided: the operator's policy decided a proposed call:
	// Tool.Verdict (accept, reject or ask: left for a human), Tool.Rule
	// that decided, PolicyVersion.
	EventToolDecided EventType = "tool_decided"
	// EventTurnStarted and EventTurnCompleted frame one agent turn (Turn).
	EventTurnStarted   EventType = "turn_started"
	EventTurnCompleted EventType = "turn_completed"
	// EventRetry: the agent server or the worker is retrying (Text says why).
	EventRetry EventType = "retry"
	// EventStatus: the job's state changed (Status), e.g. running or paused.
	EventStatus EventType = "status"
	// EventApprovalRequested, EventApprovalDecided and EventApprovalExpired
	// follow one approval request (ApprovalID).
	EventApprovalRequested EventType = "approval_requested"
	EventApprovalDecided   EventType = "approval_decided"
	EventApprovalExpired   EventType = "approval_expired"
	// EventApprovalVote: an approver's allow was recorded and the quorum
	// is not met yet (Text says who approved and who is still needed).
	EventApprovalVote EventType = "approval_vote"
	// EventDecisionError answers a decision that could not be applied
	// (unknown, settled or expired approval, invalid decision) in Error.
	EventDecisionError EventType = "decision_error"
	// EventWarning is something worth knowing that did not fail the job.
	EventWarning EventType = "warning"
	// EventSteered: a steering message reached the run (Text: the
	// guidance; Status: who steered, the verified approver when signed).
	EventSteered EventType = "steered"
)

// EventTypes lists every EventType the v1 schema knows, in schema order.
var EventTypes = []EventType{
	EventText, EventToolStarted, EventToolCompleted, EventToolRejected, EventToolDecided,
	EventTurnStarted, EventTurnCompleted, EventRetry, EventStatus,
	EventApprovalRequested, EventApprovalDecided, EventApprovalExpired, EventApprovalVote,
	EventDecisionError, EventWarning, EventSteered,
}

// Event is live progress of one job, published on jetpilot.events.<job_id>.
// Events are best-effort and short-lived (the stream keeps them an hour);
// the Result is the record. Seq starts at 1 and increases by one per job so
// a consumer can tell when it missed some.
type Event struct {
	Schema     string            `json:"schema,omitempty"`
	JobID      string            `json:"job_id"`
	Seq        uint64            `json:"seq"`
	Type       EventType         `json:"type"`
	At         time.Time         `json:"at"`
	RunID      string            `json:"run_id,omitempty"`
	SessionID  string            `json:"session_id,omitempty"`
	Text       string            `json:"text,omitempty"`
	Tool       *EventTool        `json:"tool,omitempty"`
	Turn       int               `json:"turn,omitempty"`
	Status     string            `json:"status,omitempty"`
	ApprovalID string            `json:"approval_id,omitempty"`
	Error      *Error            `json:"error,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	// PolicyVersion is the policy version that decided (tool_decided).
	PolicyVersion uint64 `json:"policy_version,omitempty"`
}

// EventTool is the tool call an Event is about.
type EventTool struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	// Result is the tool's output (tool_completed).
	Result  string `json:"result,omitempty"`
	IsError bool   `json:"is_error,omitempty"`
	// Reason says why the call was rejected (tool_rejected, tool_decided).
	Reason string `json:"reason,omitempty"`
	// Verdict and Rule: what the policy did with the call and which rule
	// decided (tool_decided).
	Verdict string `json:"verdict,omitempty"`
	Rule    string `json:"rule,omitempty"`
}
