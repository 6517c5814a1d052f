package agentsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Limits of the send-message request (AGENT_SERVER_API.md).
const (
	maxContextItems      = 32
	maxContextNameChars  = 256
	maxContextChars      = 50_000
	maxContextTotalChars = 500_000
	maxTurnsLimit        = 256
	maxSystemPromptChars = 32 * 1024
)

// sendRequest is the body of POST /v1/sessions/{id}/messages.
type sendRequest struct {
	Message   *sendMessage   `json:"message"`
	Type      *string        `json:"type"`
	RunID     *string        `json:"run_id"`
	Model     *string        `json:"model"`
	Sandbox   *bool          `json:"sandbox"`
	Context   []contextItem  `json:"context"`
	Overrides *sendOverrides `json:"overrides"`
}

type sendMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contextItem struct {
	Name     string  `json:"name"`
	Content  string  `json:"content"`
	Priority *string `json:"priority"`
}

type sendOverrides struct {
	Model        *string         `json:"model"`
	AutoApprove  json.RawMessage `json:"auto_approve"`
	SystemPrompt *string         `json:"system_prompt"`
	MaxTurns     *int64          `json:"max_turns"`
}

// validSend is a validated send-message request.
type validSend struct {
	kind     string // message | steering | follow_up
	runID    string // steering / follow_up only
	prompt   string
	model    string
	approve  autoApprove
	maxTurns int
}

// autoApprove is the run's overrides.auto_approve.
type autoApprove struct {
	all   bool
	tools []string
}

// allows reports whether a call of the named tool runs without a decision.
// A list entry matches the full name or the bare name (after the first
// "__"), as AGENT_SERVER_API.md describes.
func (a autoApprove) allows(name string) bool {
	if a.all {
		return true
	}
	bare := name
	if i := strings.Index(name, "__"); i >= 0 && i+2 < len(name) {
		bare = name[i+2:]
	}
	for _, t := range a.tools {
		if t == name || t == bare {
			return true
		}
	}
	return false
}

// peekPrompt returns the message content of a send-message body, if it is
// one, without validating anything else.
func peekPrompt(body []byte) (string, bool) {
	var req sendRequest
	if json.Unmarshal(body, &req) != nil || req.Message == nil {
		return "", false
	}
	p, err := contentText(req.Message.Content)
	return p, err == nil
}

// contentText returns message content given as a string, or as an array of
// {"type":"text","text":...} parts (joined).
func contentText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", fmt.Errorf("message.content is required")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("message.content must be a string or an array of content parts")
	}
	var b strings.Builder
	for i, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", fmt.Errorf("message.content[%d]: only {\"type\":\"text\",\"text\":...} parts are supported", i)
		}
		b.WriteString(*p.Text)
	}
	return b.String(), nil
}

// validateSend checks a send-message body the way the server does, in the
// order: JSON, role, type, content, context, overrides, model.
func (s *Server) validateSend(body []byte) (*validSend, *apiError) {
	var req sendRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, errf(http.StatusBadRequest, codeInvalidRequest, "invalid JSON body: %v", err)
	}
	if req.Message == nil {
		return nil, errf(http.StatusBadRequest, codeInvalidRequest, "message is required")
	}
	if req.Message.Role != "user" {
		return nil, errf(http.StatusBadRequest, codeInvalidMessageRole, "message.role must be \"user\", got %q", req.Message.Role)
	}
	v := &validSend{kind: "message", model: s.opts.DefaultModel, maxTurns: maxTurnsLimit}
	if req.Type != nil {
		v.kind = *req.Type
	}
	switch v.kind {
	case "message":
	case "steering", "follow_up":
		if req.RunID == nil || *req.RunID == "" {
			return nil, errf(http.StatusBadRequest, codeInvalidRequest, "type %q needs the active run_id", v.kind)
		}
		v.runID = *req.RunID
	default:
		return nil, errf(http.StatusBadRequest, codeInvalidRequest, "type must be message, steering or follow_up, got %q", v.kind)
	}
	prompt, err := contentText(req.Message.Content)
	if err != nil {
		return nil, errf(http.StatusBadRequest, codeInvalidRequest, "%v", err)
	}
	if strings.TrimSpace(prompt) == "" {
		return nil, errf(http.StatusBadRequest, codeInvalidRequest, "message.content must not be empty")
	}
	v.prompt = prompt
	if e := validateContext(req.Context); e != nil {
		return nil, e
	}
	if e := validateOverrides(req.Overrides, v); e != nil {
		return nil, e
	}
	if req.Model != nil && *req.Model != "" {
		v.model = *req.Model
	}
	if o := req.Overrides; o != nil && o.Model != nil && *o.Model != "" {
		v.model = *o.Model // overrides.model wins over model
	}
	if strings.HasPrefix(v.model, "unknown") {
		return nil, errf(http.StatusBadRequest, codeInvalidModel, "unknown model %q", v.model)
	}
	return v, nil
}

// validateContext applies the context limits. Items whose trimmed name or
// content is empty are dropped first and do not count.
func validateContext(items []contextItem) *apiError {
	var kept []contextItem
	for _, it := range items {
		if strings.TrimSpace(it.Name) == "" || strings.TrimSpace(it.Content) == "" {
			continue
		}
		kept = append(kept, it)
	}
	if len(kept) > maxContextItems {
		return errf(http.StatusBadRequest, codeInvalidContext, "at most %d context items are allowed, got %d", maxContextItems, len(kept))
	}
	total := 0
	for i, it := range kept {
		if n := utf8.RuneCountInString(it.Name); n > maxContextNameChars {
			return errf(http.StatusBadRequest, codeInvalidContext, "context item %d: name is %d chars, limit %d", i, n, maxContextNameChars)
		}
		n := utf8.RuneCountInString(it.Content)
		if n > maxContextChars {
			return errf(http.StatusBadRequest, codeInvalidContext, "context item %d (%s): content is %d chars, limit %d", i, it.Name, n, maxContextChars)
		}
		total += n
	}
	if total > maxContextTotalChars {
		return errf(http.StatusBadRequest, codeInvalidContext, "context contents total %d chars, limit %d", total, maxContextTotalChars)
	}
	return nil
}

// validateOverrides checks max_turns, system_prompt and auto_approve and
// records them on v.
func validateOverrides(o *sendOverrides, v *validSend) *apiError {
	if o == nil {
		return nil
	}
	if o.MaxTurns != nil {
		if *o.MaxTurns < 1 || *o.MaxTurns > maxTurnsLimit {
			return errf(http.StatusBadRequest, codeInvalidOverrides, "overrides.max_turns must be in 1..=%d, got %d", maxTurnsLimit, *o.MaxTurns)
		}
		v.maxTurns = int(*o.MaxTurns)
	}
	if o.SystemPrompt != nil {
		if n := utf8.RuneCountInString(*o.SystemPrompt); n > maxSystemPromptChars {
			return errf(http.StatusBadRequest, codeInvalidOverrides, "overrides.system_prompt is %d chars, limit %d", n, maxSystemPromptChars)
		}
	}
	raw := bytes.TrimSpace(o.AutoApprove)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	var mode string
	if err := json.Unmarshal(raw, &mode); err == nil {
		switch mode {
		case "all":
			v.approve.all = true
		case "none":
		default:
			return errf(http.StatusBadRequest, codeInvalidOverrides, `overrides.auto_approve must be "all", "none" or a list of tool names, got %q`, mode)
		}
		return nil
	}
	if err := json.Unmarshal(raw, &v.approve.tools); err != nil {
		return errf(http.StatusBadRequest, codeInvalidOverrides, `overrides.auto_approve must be "all", "none" or a list of tool names`)
	}
	return nil
}

// handleSendMessage starts a run (type message) or injects text into the
// active one (steering, follow_up).
func (s *Server) handleSendMessage(r *http.Request, body []byte) (int, any) {
	id := r.PathValue("id")
	s.mu.Lock()
	_, e := s.lookupLocked(id)
	s.mu.Unlock()
	if e != nil {
		return fail(e)
	}
	v, e := s.validateSend(body)
	if e != nil {
		return fail(e)
	}
	var sc *script
	if v.kind == "message" {
		var err error
		if sc, err = parseScript(v.prompt); err != nil {
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "agentsim script: %v", err))
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(id)
	if e != nil {
		return fail(e)
	}
	if v.kind != "message" {
		switch {
		case sess.run == nil:
			return fail(errf(http.StatusConflict, codeSessionNotRunning, "session %s has no active run", id))
		case sess.run.id != v.runID:
			return fail(errf(http.StatusConflict, codeRunMismatch, "run %s is not the active run of session %s", v.runID, id))
		}
		sess.addMessageLocked("user", v.prompt)
		return http.StatusOK, map[string]string{"run_id": sess.run.id}
	}
	if sess.run != nil {
		return fail(errf(http.StatusConflict, codeSessionAlreadyRunning, "session %s already has an active run %s", id, sess.run.id))
	}
	run, e := s.startRunLocked(sess, v, sc)
	if e != nil {
		return fail(e)
	}
	return http.StatusOK, map[string]string{"run_id": run.id}
}
