package spawn

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Health is the answer of GET /v1/health.
type Health struct {
	Status        string          `json:"status"`
	Version       string          `json:"version"`
	UptimeSeconds int64           `json:"uptime_seconds"`
	Sandbox       json.RawMessage `json:"sandbox,omitempty"`
}

// CreateSessionRequest is the body of POST /v1/sessions.
type CreateSessionRequest struct {
	Title string `json:"title"`
	// Cwd is the session's working directory; "" sends none.
	Cwd string `json:"cwd,omitempty"`
}

// Run states reported in RunStatus.State.
const (
	RunStateIdle     = "idle"
	RunStateStarting = "starting"
	RunStateRunning  = "running"
	RunStateFailed   = "failed"
)

// RunStatus is a session's run state; RunID is set while a run is active.
type RunStatus struct {
	State string `json:"state"`
	RunID string `json:"run_id,omitempty"`
}

// Active reports whether a run is starting or running.
func (s RunStatus) Active() bool {
	return s.State == RunStateStarting || s.State == RunStateRunning
}

// Session is an agent-server session.
type Session struct {
	ID        string    `json:"id"`
	Title     string    `json:"title"`
	Cwd       *string   `json:"cwd"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	RunStatus RunStatus `json:"run_status"`
}

// SessionConfig is the server configuration reported with a session.
type SessionConfig struct {
	DefaultModel    *string `json:"default_model"`
	AutoApproveMode string  `json:"auto_approve_mode"`
}

// SessionState is the answer of GET /v1/sessions/{id}.
type SessionState struct {
	Session Session       `json:"session"`
	Config  SessionConfig `json:"config"`
}

// MessageTypes of SendMessageRequest.Type.
const (
	MessageTypeMessage  = "message"
	MessageTypeSteering = "steering"
	MessageTypeFollowUp = "follow_up"
)

// SendMessageRequest is the body of POST /v1/sessions/{id}/messages.
type SendMessageRequest struct {
	Message MessageInput `json:"message"`
	// Type is "message" (default when empty), "steering" or "follow_up".
	Type string `json:"type"`
	// RunID is the active run, for steering and follow_up; sent as null when
	// empty.
	RunID   *string               `json:"run_id"`
	Model   string                `json:"model,omitempty"`
	Sandbox bool                  `json:"sandbox,omitempty"`
	Context []schemas.ContextItem `json:"context,omitempty"`
	// Overrides is omitted when nil or when all its fields are absent.
	Overrides *RunOverrides `json:"overrides,omitempty"`
}

// MessageInput is the user message of a SendMessageRequest.
type MessageInput struct {
	// Role is always "user"; empty is sent as "user".
	Role    string `json:"role"`
	Content string `json:"content"`
}

// RunOverrides are per-run settings the agent server takes.
type RunOverrides struct {
	Model        string               `json:"model,omitempty"`
	AutoApprove  *schemas.AutoApprove `json:"auto_approve,omitempty"`
	SystemPrompt string               `json:"system_prompt,omitempty"`
	MaxTurns     int                  `json:"max_turns,omitempty"`
}

func (o *RunOverrides) isZero() bool {
	return o == nil || (o.Model == "" && o.AutoApprove == nil && o.SystemPrompt == "" && o.MaxTurns == 0)
}

// ToolCallProposal is a tool call as the agent server reports it.
type ToolCallProposal struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	Metadata  json.RawMessage `json:"metadata,omitempty"`
}

// Pending is the answer of GET /v1/sessions/{id}/tools/pending.
type Pending struct {
	// RunID is the active run, "" when none.
	RunID     string             `json:"run_id"`
	ToolCalls []ToolCallProposal `json:"tool_calls"`
}

func (p *Pending) UnmarshalJSON(b []byte) error {
	var raw struct {
		RunID     *string            `json:"run_id"`
		ToolCalls []ToolCallProposal `json:"tool_calls"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	p.ToolCalls = raw.ToolCalls
	p.RunID = ""
	if raw.RunID != nil {
		p.RunID = *raw.RunID
	}
	return nil
}

// Message is one stored message of a session.
type Message struct {
	ID   string `json:"id"`
	Role string `json:"role"`
	// Content is the message text: a string content as is, or the text parts
	// of an array content joined together.
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
}

func (m *Message) UnmarshalJSON(b []byte) error {
	var raw struct {
		ID        json.RawMessage `json:"id"`
		Role      string          `json:"role"`
		Content   json.RawMessage `json:"content"`
		CreatedAt *time.Time      `json:"created_at"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*m = Message{Role: raw.Role}
	if raw.CreatedAt != nil {
		m.CreatedAt = *raw.CreatedAt
	}
	if len(raw.ID) > 0 && string(raw.ID) != "null" {
		var s string
		if json.Unmarshal(raw.ID, &s) == nil {
			m.ID = s
		} else {
			m.ID = string(raw.ID) // numeric ids
		}
	}
	text, err := contentText(raw.Content)
	if err != nil {
		return fmt.Errorf("message %s content: %w", m.ID, err)
	}
	m.Content = text
	return nil
}

// contentText flattens a message content: a string, or an array of parts of
// which the text ones ({"type":"text","text":...}) are kept.
func contentText(b json.RawMessage) (string, error) {
	if len(b) == 0 || string(b) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return "", fmt.Errorf("want a string or an array of parts")
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type == "text" || (p.Type == "" && p.Text != "") {
			sb.WriteString(p.Text)
		}
	}
	return sb.String(), nil
}

// MessagePage is the answer of GET /v1/sessions/{id}/messages.
type MessagePage struct {
	Messages []Message `json:"messages"`
	Total    int       `json:"total"`
}
