package schemas

import (
	"encoding/json"
	"fmt"
	"time"
)

// Schema identifiers: the optional "schema" field of each message.
const (
	JobSchemaID      = "jetpilot.job.v1"
	ResultSchemaID   = "jetpilot.result.v1"
	ApprovalSchemaID = "jetpilot.approval.v1"
	DecisionSchemaID = "jetpilot.decision.v1"
	EventSchemaID    = "jetpilot.event.v1"
)

// Job is a spawn job: one prompt to run as one session on the agent server.
// A producer publishes it on jetpilot.jobs.<profile> with Nats-Msg-Id = ID.
type Job struct {
	Schema          string            `json:"schema,omitempty"`
	ID              string            `json:"id"`
	Prompt          string            `json:"prompt"`
	Profile         string            `json:"profile,omitempty"`
	Timeout         string            `json:"timeout,omitempty"`
	Workdir         string            `json:"workdir,omitempty"`
	Model           string            `json:"model,omitempty"`
	Sandbox         bool              `json:"sandbox,omitempty"`
	PauseOnApproval bool              `json:"pause_on_approval,omitempty"`
	AllowedTools    []string          `json:"allowed_tools,omitempty"`
	CallerContext   []ContextItem     `json:"caller_context,omitempty"`
	Overrides       *Overrides        `json:"overrides,omitempty"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	// RequestedBy names who asked for the job (1-128 characters of
	// A-Za-z0-9._@-). On its own it is a claim; with Signature, the
	// policy's producers: list ties it to a key.
	RequestedBy string `json:"requested_by,omitempty"`
	// Signature is a producer's signature over the job without this member
	// (package signing). A worker checks it against the raw bytes as
	// received, never against a re-encoded Job.
	Signature *Signature `json:"signature,omitempty"`
	// SessionKey makes jobs with the same key one conversation: they
	// continue one agent session, one run at a time, in JOBS stream order.
	SessionKey string `json:"session_key,omitempty"`
	// ConcurrencyKey limits the runs at once per key, fleet-wide, to the
	// policy's concurrency limit for it.
	ConcurrencyKey string `json:"concurrency_key,omitempty"`
}

// DefaultProfile is the profile of a job that names none.
const DefaultProfile = "default"

// ProfileOrDefault returns the job's profile, or DefaultProfile when it names none.
func (j *Job) ProfileOrDefault() string {
	if j.Profile == "" {
		return DefaultProfile
	}
	return j.Profile
}

// TimeoutDuration parses Timeout; zero when the job sets none.
// Decoded jobs have already been validated, so the error only matters for
// jobs built by hand.
func (j *Job) TimeoutDuration() (time.Duration, error) {
	if j.Timeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(j.Timeout)
	if err != nil {
		return 0, fmt.Errorf("timeout: %w", err)
	}
	return d, nil
}

// ContextItem is one piece of caller context handed to the agent with the prompt.
type ContextItem struct {
	Name     string `json:"name"`
	Content  string `json:"content"`
	Priority string `json:"priority,omitempty"`
}

// Overrides are per-run settings passed through to the agent server.
type Overrides struct {
	Model        string       `json:"model,omitempty"`
	AutoApprove  *AutoApprove `json:"auto_approve,omitempty"`
	SystemPrompt string       `json:"system_prompt,omitempty"`
	MaxTurns     int          `json:"max_turns,omitempty"`
}

// IsZero reports whether no override is set, so the field can be omitted
// from the agent-server request as AGENT_SERVER_API.md asks.
func (o *Overrides) IsZero() bool {
	return o == nil || (o.Model == "" && o.AutoApprove == nil && o.SystemPrompt == "" && o.MaxTurns == 0)
}

// AutoApprove is "all", "none", or a list of tool names.
type AutoApprove struct {
	// Mode is AutoApproveAll, AutoApproveNone or AutoApproveList.
	Mode  string
	Tools []string
}

const (
	AutoApproveAll  = "all"
	AutoApproveNone = "none"
	AutoApproveList = "list"
)

func (a AutoApprove) MarshalJSON() ([]byte, error) {
	switch a.Mode {
	case AutoApproveAll, AutoApproveNone:
		return json.Marshal(a.Mode)
	case AutoApproveList, "":
		tools := a.Tools
		if tools == nil {
			tools = []string{}
		}
		return json.Marshal(tools)
	default:
		return nil, fmt.Errorf("auto_approve: unknown mode %q", a.Mode)
	}
}

func (a *AutoApprove) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if s != AutoApproveAll && s != AutoApproveNone {
			return fmt.Errorf(`auto_approve: want "all", "none" or a list of tool names, got %q`, s)
		}
		*a = AutoApprove{Mode: s}
		return nil
	}
	var tools []string
	if err := json.Unmarshal(b, &tools); err != nil {
		return fmt.Errorf(`auto_approve: want "all", "none" or a list of tool names`)
	}
	*a = AutoApprove{Mode: AutoApproveList, Tools: tools}
	return nil
}

// Status is a Result's status.
type Status string

const (
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusTimedOut  Status = "timed_out"
	StatusPaused    Status = "paused"
	StatusCancelled Status = "cancelled"
	StatusRejected  Status = "rejected"
)

// Final reports whether the status ends the job (every status but paused).
func (s Status) Final() bool { return s != StatusPaused && s != "" }

// ExitCode is the exit code DESIGN.md gives the status; nil for timed_out.
func (s Status) ExitCode() *int {
	code := 1
	switch s {
	case StatusCompleted:
		code = 0
	case StatusPaused:
		code = 10
	case StatusTimedOut:
		return nil
	}
	return &code
}

// Result is what happened to a job: its final outcome, or a pause.
// Published on jetpilot.results.<job_id> with Nats-Msg-Id = <job_id>:<phase>.
type Result struct {
	Schema string `json:"schema,omitempty"`
	JobID  string `json:"job_id"`
	// JobDigest is JobDigest of the job message's payload as received, so
	// a producer can tell its own job's result from that of another job
	// that came with the same id. Empty from older workers.
	JobDigest string `json:"job_digest,omitempty"`
	Status    Status `json:"status"`
	ExitCode  *int   `json:"exit_code"`
	SessionID string `json:"session_id,omitempty"`
	// SessionKey is the job's session_key, so a bot can show the thread.
	SessionKey   string         `json:"session_key,omitempty"`
	RunID        string         `json:"run_id,omitempty"`
	CheckpointID string         `json:"checkpoint_id,omitempty"`
	TimedOut     bool           `json:"timed_out"`
	Paused       bool           `json:"paused"`
	PauseReason  *PauseReason   `json:"pause_reason,omitempty"`
	ResumeHint   string         `json:"resume_hint,omitempty"`
	Stdout       string         `json:"stdout"`
	Stderr       string         `json:"stderr,omitempty"`
	Error        *Error         `json:"error,omitempty"`
	Usage        *Usage         `json:"usage,omitempty"`
	TotalTurns   int            `json:"total_turns,omitempty"`
	StopReason   string         `json:"stop_reason,omitempty"`
	ToolCalls    ToolCallCounts `json:"tool_calls"`
	// ToolRules counts, per policy rule, the calls it decided.
	ToolRules map[string]RuleCounts `json:"tool_rules,omitempty"`
	// PolicyVersion is the policy version (KV revision) the job ran under
	// last; 0 for a worker's flags or built-in policy.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	// Approvals lists the job's decided approvals (final results).
	Approvals    []ApprovalOutcome `json:"approvals,omitempty"`
	Attempt      int               `json:"attempt"`
	Worker       string            `json:"worker,omitempty"`
	StartedAt    time.Time         `json:"started_at"`
	FinishedAt   time.Time         `json:"finished_at"`
	DurationMS   int64             `json:"duration_ms"`
	DeadLettered bool              `json:"dead_lettered"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	// Warnings are things the caller should know that did not fail the job,
	// such as an event stream gap recovered from the session's messages.
	Warnings []string `json:"warnings,omitempty"`
}

// SetStatus sets Status and the fields derived from it (exit code, timed_out, paused).
func (r *Result) SetStatus(s Status) {
	r.Status = s
	r.ExitCode = s.ExitCode()
	r.TimedOut = s == StatusTimedOut
	r.Paused = s == StatusPaused
}

// RuleCounts is what one policy rule did: calls run unattended, refused,
// and left for a human.
type RuleCounts struct {
	Accepted int `json:"accepted,omitempty"`
	Rejected int `json:"rejected,omitempty"`
	Asked    int `json:"asked,omitempty"`
}

// PauseReason says why a run paused.
type PauseReason struct {
	// Type is "tool_approval_required" or "input_required".
	Type             string     `json:"type"`
	PendingToolCalls []ToolCall `json:"pending_tool_calls,omitempty"`
}

const (
	PauseToolApproval = "tool_approval_required"
	PauseInput        = "input_required"
)

// ToolCall is a tool call the agent proposed.
type ToolCall struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	// ArgumentsTruncated: Arguments were shortened to fit a message; the
	// call can only be denied.
	ArgumentsTruncated bool `json:"arguments_truncated,omitempty"`
	// Rule is the policy rule that left the call for a human.
	Rule string `json:"rule,omitempty"`
}

// Error is the machine-readable error of a failed or rejected job.
type Error struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Fields  []FieldError `json:"fields,omitempty"`
}

// FieldError is one problem with one field of a message.
type FieldError struct {
	// Field is a JSON pointer-like path, for example "caller_context/3/content".
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (f FieldError) String() string {
	if f.Field == "" {
		return f.Reason
	}
	return f.Field + ": " + f.Reason
}

// Usage is the token usage of a run.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// ToolCallCounts counts the tool calls the policy or a human settled.
type ToolCallCounts struct {
	Accepted int `json:"accepted"`
	Rejected int `json:"rejected"`
}

// ApprovalRequest asks a human to decide on pending tool calls.
// Published on jetpilot.approvals.<job_id>.
type ApprovalRequest struct {
	Schema           string            `json:"schema,omitempty"`
	ApprovalID       string            `json:"approval_id"`
	JobID            string            `json:"job_id"`
	SessionID        string            `json:"session_id"`
	RunID            string            `json:"run_id"`
	PendingToolCalls []ToolCall        `json:"pending_tool_calls"`
	AutoResolved     int               `json:"auto_resolved"`
	RequestedAt      time.Time         `json:"requested_at"`
	ExpiresAt        time.Time         `json:"expires_at"`
	Metadata         map[string]string `json:"metadata,omitempty"`
	ResumeHint       string            `json:"resume_hint,omitempty"`
	// PolicyVersion is the policy version that asked for the approval.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	// Needs says who may decide it, and how many must.
	Needs *ApprovalNeeds `json:"needs,omitempty"`
	// PendingDigest is the lowercase hex SHA-256 of the RFC 8785 (JCS) form
	// of PendingToolCalls (signing.PendingDigest). A signed decision repeats
	// it, so its signature covers exactly the calls the approver saw.
	PendingDigest string `json:"pending_digest,omitempty"`
}

// Decision answers an ApprovalRequest: either All, or one entry per tool call.
// Published on jetpilot.decisions.<job_id>.
type Decision struct {
	Schema     string                  `json:"schema,omitempty"`
	ApprovalID string                  `json:"approval_id"`
	JobID      string                  `json:"job_id"`
	All        string                  `json:"all,omitempty"`
	Decisions  map[string]ToolDecision `json:"decisions,omitempty"`
	// DecidedBy is free text for people reading the record (a name, a
	// chat handle). It proves nothing: who decided is the Signature's key.
	DecidedBy string `json:"decided_by,omitempty"`
	// PendingDigest is the approval request's pending_digest: it binds the
	// decision to the very calls the approver was shown.
	PendingDigest string `json:"pending_digest,omitempty"`
	// DecidedAt is when the approver decided, RFC 3339 in UTC.
	DecidedAt time.Time `json:"decided_at,omitzero"`
	// Signature is the approver's signature over the decision without this
	// member (package signing). A worker checks it against the raw bytes
	// as received, never against a re-encoded Decision.
	Signature *Signature `json:"signature,omitempty"`
}

// Signature is an ed25519 signature by an NATS nkey user key, over the
// SHA-256 of the RFC 8785 (JCS) form of the message it is part of, with the
// signature member left out. Package signing makes and checks them;
// DESIGN.md ("Signed decisions") fixes the bytes.
type Signature struct {
	// Key is the signer's public user key: "U" and 55 characters of A-Z2-7.
	Key string `json:"key"`
	// Sig is the 64-byte ed25519 signature in base64url without padding
	// (86 characters).
	Sig string `json:"sig"`
}

const (
	DecideAllow = "allow"
	DecideDeny  = "deny"
)

// ToolDecision is the decision on one tool call, as the agent server takes it.
type ToolDecision struct {
	// Action is ActionAccept, ActionReject or ActionCustomResult.
	Action  string `json:"action"`
	Content string `json:"content,omitempty"`
}

const (
	ActionAccept       = "accept"
	ActionReject       = "reject"
	ActionCustomResult = "custom_result"
)
