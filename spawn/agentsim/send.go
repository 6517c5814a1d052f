package agentsim

import (
	"encoding/json"
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
	defaultMaxTurns      = 64
	maxTurnsLimit        = 256
	maxSystemPromptChars = 32 * 1024
)

// validSend is a decoded and validated send-message request.
type validSend struct {
	kind     string // message | steering | follow_up
	runID    string // "" when absent
	prompt   string // the text parts of the message
	content  any    // the message content, for the history
	name     *string
	model    string // "" when the request names none
	approve  autoApprove
	maxTurns int
	system   string // non-blank overrides.system_prompt
	sc       *script

	// Validation failures found while decoding, answered after the
	// session lookup (the real order).
	badMaxTurns, badSystem bool
}

// autoApprove is a run's tool policy: all, or the listed bare tool names
// (none when empty).
type autoApprove struct {
	all   bool
	tools []string
}

// stripToolPrefix returns what follows the first "__", if anything does.
func stripToolPrefix(name string) string {
	if i := strings.Index(name, "__"); i >= 0 && i+2 < len(name) {
		return name[i+2:]
	}
	return name
}

// allows reports whether a call of the named tool runs without a decision.
// Entries and the call's name are compared without their server prefix
// (the real policy normalises both).
func (a autoApprove) allows(name string) bool {
	if a.all {
		return true
	}
	bare := stripToolPrefix(name)
	for _, t := range a.tools {
		if stripToolPrefix(strings.TrimSpace(t)) == bare {
			return true
		}
	}
	return false
}

// peekPrompt returns the message text of a send-message body, if it is
// one, without validating anything else.
func peekPrompt(body []byte) (string, bool) {
	var req struct {
		Message *struct {
			Content json.RawMessage `json:"content"`
		} `json:"message"`
	}
	if json.Unmarshal(body, &req) != nil || req.Message == nil {
		return "", false
	}
	var s string
	if json.Unmarshal(req.Message.Content, &s) == nil {
		return s, true
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(req.Message.Content, &parts) != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), true
}

// decodeSend decodes a send-message body the way serde does (422 for a
// body of the wrong shape) and returns it with its canonical form.
func (s *Server) decodeSend(r *http.Request) (*validSend, map[string]any, *plainError) {
	o, pe := decodeBody(r)
	if pe != nil {
		return nil, nil, pe
	}
	v := &validSend{maxTurns: defaultMaxTurns}
	canon := map[string]any{}

	m, pe := o.object("", "message", true)
	if pe != nil {
		return nil, nil, pe
	}
	role, pe := m.enum("message", "role", true, "", "system", "user", "assistant", "tool")
	if pe != nil {
		return nil, nil, pe
	}
	content, prompt, pe := decodeContent(m)
	if pe != nil {
		return nil, nil, pe
	}
	if v.name, pe = m.str("message", "name", false); pe != nil {
		return nil, nil, pe
	}
	cm := map[string]any{"role": role, "content": content}
	if v.name != nil {
		cm["name"] = *v.name
	}
	if po := m.value("provider_options"); po != nil {
		cm["provider_options"] = rawValue(po)
	}
	canon["message"] = cm
	v.content, v.prompt = content, prompt

	if v.kind, pe = o.enum("", "type", false, "message", "message", "steering", "follow_up"); pe != nil {
		return nil, nil, pe
	}
	canon["type"] = v.kind
	runID, pe := o.uuidStr("", "run_id", false)
	if pe != nil {
		return nil, nil, pe
	}
	canon["run_id"] = runID
	if runID != nil {
		v.runID = *runID
	}
	model, pe := o.str("", "model", false)
	if pe != nil {
		return nil, nil, pe
	}
	canon["model"] = model
	sandbox, pe := o.boolean("", "sandbox")
	if pe != nil {
		return nil, nil, pe
	}
	canon["sandbox"] = sandbox

	ctx, pe := decodeContext(o)
	if pe != nil {
		return nil, nil, pe
	}
	canon["context"] = nil
	if ctx != nil {
		canon["context"] = ctx
	}

	ov, pe := o.object("", "overrides", false)
	if pe != nil {
		return nil, nil, pe
	}
	canon["overrides"] = nil
	approve := s.defaultPolicy()
	var overrideModel *string
	if ov != nil {
		co := map[string]any{}
		if overrideModel, pe = ov.str("overrides", "model", false); pe != nil {
			return nil, nil, pe
		}
		if overrideModel != nil {
			co["model"] = *overrideModel
		}
		if raw := ov.value("auto_approve"); raw != nil {
			var mode string
			var list []string
			switch {
			case json.Unmarshal(raw, &mode) == nil:
				co["auto_approve"] = mode
				switch strings.ToLower(strings.TrimSpace(mode)) {
				case "all":
					approve = autoApprove{all: true}
				case "none":
					approve = autoApprove{}
				default: // silently the server's default policy
				}
			case json.Unmarshal(raw, &list) == nil:
				co["auto_approve"] = list
				approve = autoApprove{}
				for _, t := range list {
					if t = strings.TrimSpace(stripToolPrefix(t)); t != "" {
						approve.tools = append(approve.tools, t)
					}
				}
			default:
				return nil, nil, dataErr("overrides.auto_approve", "data did not match any variant of untagged enum AutoApproveOverride")
			}
		}
		sp, pe := ov.str("overrides", "system_prompt", false)
		if pe != nil {
			return nil, nil, pe
		}
		if sp != nil {
			co["system_prompt"] = *sp
			if utf8.RuneCountInString(*sp) > maxSystemPromptChars {
				v.badSystem = true
			} else if strings.TrimSpace(*sp) != "" {
				v.system = *sp
			}
		}
		mt, pe := ov.usize("overrides", "max_turns")
		if pe != nil {
			return nil, nil, pe
		}
		if mt != nil {
			co["max_turns"] = *mt
			if *mt < 1 || *mt > maxTurnsLimit {
				v.badMaxTurns = true
			} else {
				v.maxTurns = int(*mt)
			}
		}
		canon["overrides"] = co
	}
	v.approve = approve
	// overrides.model wins over model.
	if model != nil {
		v.model = *model
	}
	if overrideModel != nil {
		v.model = *overrideModel
	}
	return v, map[string]any{"role": role, "ctx": ctx, "canon": canon}, nil
}

// defaultPolicy is the server's default tool policy (Options.AutoApprove).
func (s *Server) defaultPolicy() autoApprove {
	a := autoApprove{}
	for _, t := range s.opts.AutoApprove {
		if t = strings.TrimSpace(stripToolPrefix(t)); t != "" {
			a.tools = append(a.tools, t)
		}
	}
	return a
}

// decodeContent decodes message.content: a string, or content parts.
// prompt is the text of the text parts, concatenated.
func decodeContent(m obj) (any, string, *plainError) {
	raw, present := m["content"]
	if !present {
		return nil, "", dataErr("message", "missing field `content`")
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str, str, nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return nil, "", dataErr("message.content", "Content must be a string or array")
	}
	parts := make([]any, 0, len(items))
	var text strings.Builder
	for _, it := range items {
		var p obj
		if json.Unmarshal(it, &p) != nil || p == nil {
			return nil, "", dataErr("message.content", "Invalid content parts: invalid type, expected internally tagged enum ContentPart")
		}
		typ, pe := p.enum("message.content", "type", true, "", "text", "image", "tool_call", "tool_result")
		if pe != nil {
			return nil, "", dataErr("message.content", "Invalid content parts: %s", strings.TrimPrefix(pe.msg, dataPrefix))
		}
		part := map[string]any{"type": typ}
		need := map[string][]string{
			"text": {"text"}, "image": {"url"}, "tool_call": {"id", "name"}, "tool_result": {"tool_call_id"},
		}[typ]
		for _, f := range need {
			s, pe := p.str("", f, true)
			if pe != nil {
				return nil, "", dataErr("message.content", "Invalid content parts: %s", strings.TrimPrefix(pe.msg, dataPrefix))
			}
			part[f] = *s
		}
		for _, f := range map[string][]string{"tool_call": {"arguments"}, "tool_result": {"content"}}[typ] {
			rv, ok := p[f]
			if !ok {
				return nil, "", dataErr("message.content", "Invalid content parts: missing field `%s`", f)
			}
			part[f] = rawValue(rv)
		}
		for _, f := range []string{"detail", "provider_options", "metadata"} {
			if rv := p.value(f); rv != nil {
				part[f] = rawValue(rv)
			}
		}
		if typ == "text" {
			text.WriteString(part["text"].(string))
		}
		parts = append(parts, part)
	}
	return parts, text.String(), nil
}

// contextItem is one context entry as sent.
type contextItem struct {
	name, content string
	priority      *string
}

// decodeContext decodes the optional context list (name and content are
// required strings).
func decodeContext(o obj) ([]any, *plainError) {
	items, ok, pe := o.array("", "context")
	if pe != nil || !ok {
		return nil, pe
	}
	out := make([]any, 0, len(items))
	for _, it := range items {
		var c obj
		if json.Unmarshal(it, &c) != nil || c == nil {
			return nil, dataErr("context", "invalid type: expected struct CallerContextInput")
		}
		name, pe := c.str("context", "name", true)
		if pe != nil {
			return nil, pe
		}
		content, pe := c.str("context", "content", true)
		if pe != nil {
			return nil, pe
		}
		prio, pe := c.str("context", "priority", false)
		if pe != nil {
			return nil, pe
		}
		m := map[string]any{"name": *name, "content": *content}
		if prio != nil {
			m["priority"] = *prio
		}
		out = append(out, m)
	}
	return out, nil
}

// validateContext applies the context limits to the raw items, empty ones
// included (they are dropped only afterwards).
func validateContext(items []any) *apiError {
	if len(items) > maxContextItems {
		return errf(http.StatusBadRequest, codeInvalidContext, "context can include at most %d entries", maxContextItems)
	}
	total := 0
	for _, it := range items {
		m := it.(map[string]any)
		if utf8.RuneCountInString(m["name"].(string)) > maxContextNameChars {
			return errf(http.StatusBadRequest, codeInvalidContext, "context.name exceeds %d characters", maxContextNameChars)
		}
		n := utf8.RuneCountInString(m["content"].(string))
		if n > maxContextChars {
			return errf(http.StatusBadRequest, codeInvalidContext, "context.content exceeds %d characters", maxContextChars)
		}
		total += n
		if total > maxContextTotalChars {
			return errf(http.StatusBadRequest, codeInvalidContext, "total context exceeds %d characters", maxContextTotalChars)
		}
	}
	return nil
}

// handleSendMessage starts a run (type message) or injects text into the
// active one (steering, follow_up). Checks run in the real order: the
// body's shape (plain-text 4xx), the session (404), validation (400),
// Idempotency-Key, then the run state.
func (s *Server) handleSendMessage(r *http.Request) (int, any) {
	id, pe := pathUUID(r, "id")
	if pe != nil {
		return rejected(pe)
	}
	v, extra, pe := s.decodeSend(r)
	if pe != nil {
		return rejected(pe)
	}
	s.mu.Lock()
	_, e := s.lookupLocked(id)
	s.mu.Unlock()
	if e != nil {
		return fail(e)
	}
	if extra["role"] != "user" {
		return fail(errf(http.StatusBadRequest, codeInvalidMessageRole, "message.role must be 'user' for this endpoint"))
	}
	if ctx, _ := extra["ctx"].([]any); ctx != nil {
		if e := validateContext(ctx); e != nil {
			return fail(e)
		}
	}
	if v.badMaxTurns {
		return fail(errf(http.StatusBadRequest, codeInvalidOverrides, "max_turns must be between 1 and 256"))
	}
	if v.badSystem {
		return fail(errf(http.StatusBadRequest, codeInvalidOverrides, "system_prompt exceeds maximum length"))
	}
	if v.kind == "message" {
		sc, err := parseScript(v.prompt)
		if err != nil {
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "agentsim script: %v", err))
		}
		v.sc = sc
	}
	im, done, status, body := s.idemLookup(r, "/v1/sessions/"+id+"/messages", canonical(extra["canon"]))
	if done {
		return status, body
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(id)
	if e != nil {
		return fail(e)
	}
	if v.kind != "message" {
		if v.runID == "" {
			return fail(errf(http.StatusConflict, codeRunMismatch, "run_id is required for steering/follow_up"))
		}
		r, e := s.commandRunLocked(sess, v.runID)
		if e != nil {
			return fail(e)
		}
		r.commandLocked(command{kind: v.kind, text: v.prompt})
		if v.kind == "steering" {
			s.steers++
		}
		return im.ok(http.StatusOK, map[string]string{"run_id": r.id})
	}
	if v.runID != "" && sess.run != nil && sess.run.id != v.runID {
		return fail(errf(http.StatusConflict, codeRunMismatch, "Provided run_id does not match active run"))
	}
	if sess.run != nil {
		return fail(errf(http.StatusConflict, codeSessionAlreadyRunning, "Session already has an active run"))
	}
	run, e := s.startRunLocked(sess, v)
	if e != nil {
		return fail(e)
	}
	return im.ok(http.StatusOK, map[string]string{"run_id": run.id})
}
