package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits a job must stay within. The character limits are the agent
// server's (AGENT_SERVER_API.md); the schema states them too, these are for
// the checks JSON Schema cannot express.
const (
	// MaxPromptBytes caps the prompt in UTF-8 bytes: 1 MiB.
	MaxPromptBytes = 1 << 20
	// MaxContextTotalChars caps all caller_context contents together.
	MaxContextTotalChars = 500_000
	// MaxJobIDLen is the longest job id.
	MaxJobIDLen = 128
)

// DecodeJob parses and validates a job message. A valid job comes back
// ready to run; Profile is left empty when absent (see ProfileOrDefault).
// Empty arrays and objects decode as nil: an empty allowed_tools means the
// same as none.
//
// An invalid job yields a *ValidationError listing every problem found,
// not only the first. The Job returned with it carries what could still be
// read safely, so the rejection can be addressed: ID when it is a valid id,
// Metadata when it is a valid object of strings.
//
// A plainly valid job is decoded by a single-pass fast path (fastjob.go);
// anything it has the least doubt about gets the full schema validation,
// so results and errors are exactly those of the full validation.
func DecodeJob(data []byte) (Job, error) {
	if h := testHookDecodeJob; h != nil {
		h(data)
	}
	if j, ok := fastDecodeJob(data); ok {
		return j, nil
	}
	return decodeJobFull(data)
}

// testHookDecodeJob, set only by tests, sees every DecodeJob input, so the
// differential test can replay the other tests' documents.
var testHookDecodeJob func(data []byte)

// decodeJobFull is DecodeJob without the fast path: full validation,
// which explains every problem.
func decodeJobFull(data []byte) (Job, error) {
	s, err := schemaFor(SchemaJob)
	if err != nil {
		return Job{}, fmt.Errorf("decode job: %w", err)
	}
	v, problems := s.check(data)
	if len(problems) > 0 {
		return partialJob(v, data, problems), newValidationError(SchemaJob, problems)
	}
	m, _ := v.(map[string]any)
	return jobFromDoc(m), nil
}

// JobIDOf returns the id of a job message when it can be read and is a
// valid id, else "". It reads only as far as it must, so it also finds the
// id of a job whose JSON breaks after the id. When "id" appears twice the
// last one counts, as in DecodeJob.
func JobIDOf(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	id := ""
	// Every iteration consumes input, so the loop ends with it.
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return id
		}
		if key, _ := tok.(string); key != "id" {
			if err := skipValue(dec); err != nil {
				return id
			}
			continue
		}
		tok, err = dec.Token()
		if err != nil {
			return id
		}
		s, ok := tok.(string)
		if ok && ValidJobID(s) {
			id = s
			continue
		}
		id = ""
		if d, ok := tok.(json.Delim); ok && (d == '{' || d == '[') {
			if err := skipNested(dec); err != nil {
				return id
			}
		}
	}
	return id
}

// skipValue consumes one JSON value from dec.
func skipValue(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); ok && (d == '{' || d == '[') {
		return skipNested(dec)
	}
	return nil
}

// skipNested consumes the rest of an object or array whose opening
// delimiter has been read.
func skipNested(dec *json.Decoder) error {
	for depth := 1; depth > 0; {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}

// jobGoChecks are the job rules JSON Schema cannot state. A field the
// schema already faulted is skipped, so each problem is reported once.
func jobGoChecks(v any, schemaProblems []FieldError) []FieldError {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	faulted := func(field string) bool {
		for _, p := range schemaProblems {
			if p.Field == field {
				return true
			}
		}
		return false
	}
	var out []FieldError
	if p, ok := m["prompt"].(string); ok && !faulted("prompt") {
		switch {
		case len(p) > MaxPromptBytes:
			out = append(out, FieldError{Field: "prompt", Reason: overBytes(len(p), MaxPromptBytes)})
		case strings.TrimSpace(p) == "" && p != "":
			out = append(out, FieldError{Field: "prompt", Reason: "must not be only whitespace"})
		}
	}
	if t, ok := m["timeout"].(string); ok && !faulted("timeout") {
		if reason := timeoutProblem(t); reason != "" {
			out = append(out, FieldError{Field: "timeout", Reason: reason})
		}
	}
	if items, ok := m["caller_context"].([]any); ok {
		total := 0
		for _, it := range items {
			if item, ok := it.(map[string]any); ok {
				if c, ok := item["content"].(string); ok {
					total += utf8.RuneCountInString(c)
				}
			}
		}
		if total > MaxContextTotalChars {
			out = append(out, FieldError{Field: "caller_context", Reason: fmt.Sprintf(
				"contents add up to %s characters, over the agent server's limit of %s in total",
				count(total), count(MaxContextTotalChars))})
		}
	}
	return out
}

func timeoutProblem(t string) string {
	d, err := time.ParseDuration(t)
	switch {
	case err != nil:
		return fmt.Sprintf(`%s is not a Go duration such as "90s" or "1h30m"`, quote(t))
	case d <= 0:
		return fmt.Sprintf("must be greater than zero (got %s)", quote(t))
	}
	return ""
}

// partialJob recovers what an invalid job still says reliably.
func partialJob(v any, data []byte, problems []FieldError) Job {
	m, ok := v.(map[string]any)
	if !ok {
		return Job{ID: JobIDOf(data)}
	}
	var j Job
	if id, ok := m["id"].(string); ok && ValidJobID(id) {
		j.ID = id
	}
	for _, p := range problems {
		if p.Field == "metadata" || strings.HasPrefix(p.Field, "metadata/") {
			return j
		}
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		j.Metadata = stringMap(md)
	}
	return j
}

// jobFromDoc builds a Job from a document the schema accepted. It never
// panics: a value of an unexpected type is left at its zero value.
func jobFromDoc(m map[string]any) Job {
	var j Job
	for k, v := range m {
		switch k {
		case "schema":
			j.Schema, _ = v.(string)
		case "id":
			j.ID, _ = v.(string)
		case "prompt":
			j.Prompt, _ = v.(string)
		case "profile":
			j.Profile, _ = v.(string)
		case "timeout":
			j.Timeout, _ = v.(string)
		case "workdir":
			j.Workdir, _ = v.(string)
		case "model":
			j.Model, _ = v.(string)
		case "sandbox":
			j.Sandbox, _ = v.(bool)
		case "pause_on_approval":
			j.PauseOnApproval, _ = v.(bool)
		case "allowed_tools":
			j.AllowedTools = stringList(v)
		case "caller_context":
			items, _ := v.([]any)
			for _, it := range items {
				item, _ := it.(map[string]any)
				ci := ContextItem{}
				ci.Name, _ = item["name"].(string)
				ci.Content, _ = item["content"].(string)
				ci.Priority, _ = item["priority"].(string)
				j.CallerContext = append(j.CallerContext, ci)
			}
		case "overrides":
			if o, ok := v.(map[string]any); ok {
				j.Overrides = overridesFromDoc(o)
			}
		case "metadata":
			if md, ok := v.(map[string]any); ok {
				j.Metadata = stringMap(md)
			}
		case "requested_by":
			j.RequestedBy, _ = v.(string)
		case "session_key":
			j.SessionKey, _ = v.(string)
		case "concurrency_key":
			j.ConcurrencyKey, _ = v.(string)
		case "signature":
			j.Signature = signatureFromDoc(v)
		}
	}
	return j
}

func overridesFromDoc(m map[string]any) *Overrides {
	o := &Overrides{}
	o.Model, _ = m["model"].(string)
	o.SystemPrompt, _ = m["system_prompt"].(string)
	if n, ok := m["max_turns"].(json.Number); ok {
		// The schema allows 1..256, including forms like 1.0 and 1e2.
		if f, err := strconv.ParseFloat(string(n), 64); err == nil {
			o.MaxTurns = int(f)
		}
	}
	switch a := m["auto_approve"].(type) {
	case string:
		o.AutoApprove = &AutoApprove{Mode: a}
	case []any:
		o.AutoApprove = &AutoApprove{Mode: AutoApproveList, Tools: stringList(a)}
	}
	return o
}

// stringList converts a JSON array of strings; empty gives nil.
func stringList(v any) []string {
	list, _ := v.([]any)
	if len(list) == 0 {
		return nil
	}
	out := make([]string, 0, len(list))
	for _, s := range list {
		if s, ok := s.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// stringMap converts a JSON object of strings; empty gives nil, and a
// non-string value makes the whole map unusable (nil).
func stringMap(m map[string]any) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil
		}
		out[k] = s
	}
	return out
}
