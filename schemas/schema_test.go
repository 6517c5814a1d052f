package schemas

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSchemasCompile(t *testing.T) {
	t.Parallel()
	for _, name := range Names() {
		s, err := schemaFor(name)
		require.NoError(t, err, name)
		require.NotNil(t, s.schema, name)

		raw, err := SchemaJSON(name)
		require.NoError(t, err)
		var doc map[string]any
		require.NoError(t, json.Unmarshal(raw, &doc))
		assert.Equal(t, "https://json-schema.org/draft/2020-12/schema", doc["$schema"], name)
		assert.Equal(t, schemaBaseURL+name+".v1.json", doc["$id"], name)
		// Each schema's "schema" property is its own id.
		props := doc["properties"].(map[string]any)
		assert.Equal(t, "jetpilot."+name+".v1", props["schema"].(map[string]any)["const"], name)
	}
}

func TestSchemaNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"job", "jetpilot.job.v1", "job.v1.json", JobSchemaID} {
		_, err := schemaFor(name)
		require.NoError(t, err, name)
	}
	_, err := schemaFor("jobs")
	require.ErrorContains(t, err, `unknown schema "jobs" (known: job, result, approval, decision, event, dead, control, cancel, cancel_reply, steer, policy, audit)`)
	_, err = SchemaJSON("nope")
	require.ErrorContains(t, err, `unknown schema "nope"`)

	err = Validate("nope", map[string]any{})
	require.ErrorContains(t, err, `validate: unknown schema "nope"`)
	var verr *ValidationError
	require.False(t, errors.As(err, &verr), "an unknown schema is not a validation failure")
}

func TestValidateInputs(t *testing.T) {
	t.Parallel()
	ok := `{"id":"j","prompt":"p"}`
	require.NoError(t, Validate("job", []byte(ok)))
	require.NoError(t, Validate("job", json.RawMessage(ok)))
	require.NoError(t, Validate("job", Job{ID: "j", Prompt: "p"}))
	require.NoError(t, Validate("job", &Job{ID: "j", Prompt: "p"}))

	// Go-only rules apply through Validate too.
	err := Validate("job", Job{ID: "j", Prompt: "p", Timeout: "soon"})
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.Equal(t, "invalid_job", verr.Code)
	require.Equal(t, []FieldError{{Field: "timeout", Reason: `"soon" is not a Go duration such as "90s" or "1h30m"`}}, verr.Problems)

	err = Validate("event", Event{JobID: "j", Seq: 1, Type: "bogus", At: time.Now()})
	require.ErrorAs(t, err, &verr)
	require.Equal(t, "invalid_event", verr.Code)
	require.Len(t, verr.Problems, 1)
	assert.Equal(t, "type", verr.Problems[0].Field)
	assert.Contains(t, verr.Problems[0].Reason, `must be one of "text", "tool_started"`)

	// A value that cannot be marshalled is a plain error.
	err = Validate("job", map[string]any{"x": make(chan int)})
	require.ErrorContains(t, err, "validate job: marshal")
	require.False(t, errors.As(err, &verr))
}

// exampleSchema maps an example file to its schema: "result-paused.json"
// is a result.
func exampleSchema(file string) string {
	base := strings.TrimSuffix(filepath.Base(file), ".json")
	kind, _, _ := strings.Cut(base, "-")
	return kind
}

// notMessages are the example files that are not messages: the signing
// test vector (package signing checks it).
var notMessages = map[string]bool{"signing-vector.json": true}

func readExamples(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("examples/*.json")
	require.NoError(t, err)
	out := make(map[string][]byte, len(files))
	for _, f := range files {
		if notMessages[filepath.Base(f)] {
			continue
		}
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		out[filepath.Base(f)] = data
	}
	want := []string{
		"job-minimal.json", "job-full.json", "job-signed.json", "result-completed.json", "result-paused.json",
		"result-rejected.json", "result-timed_out.json", "approval.json", "decision-all.json",
		"decision-per-call.json", "decision-signed.json", "event-text.json", "dead.json",
		"control-expiry.json", "cancel.json", "cancel_reply-cancelling.json", "cancel_reply-error.json",
		"policy-dev.json", "audit-decision_applied.json", "audit-policy_set.json",
	}
	for _, w := range want {
		require.Contains(t, out, w, "example missing")
	}
	return out
}

func TestExamplesValidate(t *testing.T) {
	t.Parallel()
	for name, data := range readExamples(t) {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, Validate(exampleSchema(name), data))
		})
	}
}

// TestExamplesRoundTrip decodes every example into its Go type and
// marshals it back: nothing the example says may be lost on the way.
func TestExamplesRoundTrip(t *testing.T) {
	t.Parallel()
	for name, data := range readExamples(t) {
		if exampleSchema(name) == SchemaPolicy {
			// Its Go type, policy.Document, is in package policy, which
			// imports this one: policy's TestExamplesParse round-trips it.
			continue
		}
		t.Run(name, func(t *testing.T) {
			var v any
			switch exampleSchema(name) {
			case "job":
				j, err := DecodeJob(data)
				require.NoError(t, err)
				v = j
			case "decision":
				d, err := DecodeDecision(data)
				require.NoError(t, err)
				v = d
			case "result":
				v = unmarshalStrict[Result](t, data)
			case "approval":
				v = unmarshalStrict[ApprovalRequest](t, data)
			case "event":
				v = unmarshalStrict[Event](t, data)
			case "dead":
				v = unmarshalStrict[DeadLetter](t, data)
			case "control":
				c, err := DecodeControl(data)
				require.NoError(t, err)
				v = c
			case "cancel":
				v = unmarshalStrict[CancelRequest](t, data)
			case "cancel_reply":
				v = unmarshalStrict[CancelReply](t, data)
			case "audit":
				a, err := DecodeAudit(data)
				require.NoError(t, err)
				v = a
			default:
				t.Fatalf("no Go type for %s", name)
			}
			out, err := json.Marshal(v)
			require.NoError(t, err)
			var orig, back any
			require.NoError(t, json.Unmarshal(data, &orig))
			require.NoError(t, json.Unmarshal(out, &back))
			assertSubset(t, "", orig, back)
			require.NoError(t, Validate(exampleSchema(name), out), "re-marshalled example must still validate")
		})
	}
}

func unmarshalStrict[T any](t *testing.T, data []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&v))
	return v
}

// assertSubset asserts every value in want appears, equal, in got.
func assertSubset(t *testing.T, path string, want, got any) {
	t.Helper()
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !assert.True(t, ok, "%s: want an object, got %T", path, got) {
			return
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !assert.True(t, ok, "%s/%s lost in the round trip", path, k) {
				continue
			}
			assertSubset(t, path+"/"+k, wv, gv)
		}
	case []any:
		g, ok := got.([]any)
		if !assert.True(t, ok, "%s: want an array, got %T", path, got) || !assert.Len(t, g, len(w), path) {
			return
		}
		for i := range w {
			assertSubset(t, path, w[i], g[i])
		}
	default:
		assert.Equal(t, want, got, path)
	}
}

// fullValues builds one value of every message type with every field set
// (TestFullValuesAreFull keeps it so). Where fields exclude each other
// there are two values.
func fullValues() map[string][]any {
	at := time.Date(2025, 4, 5, 14, 2, 11, 204_000_000, time.UTC)
	md := map[string]string{"channel": "C1"}
	calls := []ToolCall{{ID: "call_1", Name: "stakpak__run_command", Arguments: json.RawMessage(`{"command":"ls"}`), ArgumentsTruncated: true, Rule: "prod-change"}}
	fields := []FieldError{{Field: "prompt", Reason: "is required"}}
	// The shapes of a signature; package signing makes real ones.
	sig := &Signature{Key: "U" + strings.Repeat("A", 55), Sig: strings.Repeat("A", 86)}
	digest := strings.Repeat("0f", 32)
	return map[string][]any{
		"job": {Job{
			Schema: JobSchemaID, ID: "job-1", Prompt: "do it", Profile: "ops", Timeout: "90s",
			Workdir: "/srv", Model: "m1", Sandbox: true, PauseOnApproval: true,
			AllowedTools:  []string{"view"},
			CallerContext: []ContextItem{{Name: "n", Content: "c", Priority: "high"}},
			Overrides: &Overrides{Model: "m2", AutoApprove: &AutoApprove{Mode: AutoApproveList, Tools: []string{"view"}},
				SystemPrompt: "be brief", MaxTurns: 12},
			Metadata: md, RequestedBy: "alice@example.com", Signature: sig, SessionKey: "thread-1", ConcurrencyKey: "env:prod",
		}},
		"result": {Result{
			Schema: ResultSchemaID, JobID: "job-1", JobDigest: JobDigest([]byte(`{"id":"job-1","prompt":"p"}`)), Status: StatusPaused, ExitCode: StatusPaused.ExitCode(),
			SessionID: "s", SessionKey: "thread-1", RunID: "r", CheckpointID: "c", TimedOut: false, Paused: true,
			PauseReason: &PauseReason{Type: PauseToolApproval, PendingToolCalls: calls},
			ResumeHint:  "jetpilot approve a --allow", Stdout: "out", Stderr: "err",
			Error: &Error{Code: "x", Message: "y", Fields: fields}, Usage: &Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3},
			TotalTurns: 2, StopReason: "completed", ToolCalls: ToolCallCounts{Accepted: 1, Rejected: 1}, Attempt: 1,
			Worker: "w", StartedAt: at, FinishedAt: at.Add(time.Second), DurationMS: 1000, DeadLettered: true,
			Metadata: md, Warnings: []string{"gap"},
			ToolRules: map[string]RuleCounts{"read-only": {Accepted: 2, Rejected: 1, Asked: 1}}, PolicyVersion: 4,
			Approvals: []ApprovalOutcome{{ApprovalID: "apr_1", Decision: "allow", Approvers: []ApproverRef{{Name: "alice", Key: "UABC"}},
				Rules: []string{"prod-change"}, DecidedAt: at}},
		}},
		"approval": {ApprovalRequest{
			Schema: ApprovalSchemaID, ApprovalID: "job-1:1", JobID: "job-1", SessionID: "s", RunID: "r",
			PendingToolCalls: calls, AutoResolved: 1, RequestedAt: at, ExpiresAt: at.Add(time.Hour),
			Metadata: md, ResumeHint: "jetpilot approve job-1:1 --allow", PolicyVersion: 4,
			Needs: &ApprovalNeeds{Rules: []string{"change"}, AllowBy: []string{"alice"}, DenyBy: []string{"alice"}, Quorum: 1, RequesterMayApprove: true, Signed: true, PolicyVersion: 4}, PendingDigest: digest,
		}},
		"decision": {
			Decision{Schema: DecisionSchemaID, ApprovalID: "job-1:1", JobID: "job-1", All: DecideAllow, DecidedBy: "me",
				PendingDigest: digest, DecidedAt: at, Signature: sig},
			Decision{Schema: DecisionSchemaID, ApprovalID: "job-1:1", JobID: "job-1", DecidedBy: "me",
				Decisions: map[string]ToolDecision{"call_1": {Action: ActionCustomResult, Content: "done"}}},
		},
		"event": {Event{
			Schema: EventSchemaID, JobID: "job-1", Seq: 7, Type: EventToolCompleted, At: at, RunID: "r", SessionID: "s",
			Text: "t", Tool: &EventTool{ID: "call_1", Name: "view", Arguments: json.RawMessage(`{"path":"/"}`), Result: "ok", IsError: true, Reason: "why",
				Verdict: "ask", Rule: "prod-change"},
			Turn: 3, Status: "running", ApprovalID: "job-1:1", Error: &Error{Code: "c", Message: "m", Fields: fields}, Metadata: md, PolicyVersion: 4,
		}},
		"dead": {
			DeadLetter{Schema: DeadSchemaID, JobID: "job-1", Reason: "invalid_job", Error: "bad", Fields: fields, Attempt: 1,
				Worker: "w", DeadAt: at, Job: json.RawMessage(`{"id":"job-1"}`), Metadata: md},
			DeadLetter{Schema: DeadSchemaID, JobID: "", Reason: "invalid_job", Error: "bad", Fields: fields, Attempt: 1,
				Worker: "w", DeadAt: at, Raw: "not json", Metadata: md},
			DeadLetter{Schema: DeadSchemaID, JobID: "", Reason: "invalid_job", Error: "bad", Fields: fields, Attempt: 1,
				Worker: "w", DeadAt: at, RawBase64: "/w==", JobTruncated: true, Unreadable: true, Metadata: md},
		},
		"audit": {
			AuditRecord{Schema: AuditSchemaID, JobID: "job-1", Seq: 2, Prev: strings.Repeat("ab", 32), Kind: AuditDecisionApplied, At: at,
				ApprovalID: "job-1:1", Approver: AuditApprover{Name: "alice", Key: "UAB"}, Rule: "prod-change", PolicyVersion: 4,
				PendingDigest: strings.Repeat("cd", 32), Decision: "allow", Reason: "looks right", Code: "x", Count: 1, Worker: "w"},
			AuditRecord{Schema: AuditSchemaID, Seq: 1, Kind: AuditPolicySet, At: at, PolicyVersion: 5, Worker: "jetpilot policy set"},
		},
	}
}

// TestFullValuesAreFull fails when a Go type gains a field fullValues does
// not set, so TestGoTypesMatchSchemas keeps covering every field.
func TestFullValuesAreFull(t *testing.T) {
	t.Parallel()
	for name, values := range fullValues() {
		set := map[string]bool{}
		for _, v := range values {
			collectSetFields(reflect.ValueOf(v), reflect.TypeOf(v).Name(), set)
		}
		var missing []string
		for _, v := range values {
			for _, f := range allFields(reflect.TypeOf(v), reflect.TypeOf(v).Name()) {
				if !set[f] && !slices.Contains(missing, f) {
					missing = append(missing, f)
				}
			}
		}
		// Booleans that must be false in a consistent paused result.
		missing = slices.DeleteFunc(missing, func(f string) bool { return f == "Result.TimedOut" })
		assert.Empty(t, missing, "%s: fields never set in fullValues", name)
	}
}

func allFields(typ reflect.Type, prefix string) []string {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeOf(time.Time{}) || typ == reflect.TypeOf(AutoApprove{}) {
		return nil
	}
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		out = append(out, prefix+"."+f.Name)
		out = append(out, allFields(f.Type, typ.Field(i).Type.String())...)
	}
	return out
}

func collectSetFields(v reflect.Value, prefix string, set map[string]bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	if v.Kind() == reflect.Slice {
		for i := range v.Len() {
			collectSetFields(v.Index(i), prefix, set)
		}
		return
	}
	if v.Kind() != reflect.Struct || v.Type() == reflect.TypeOf(time.Time{}) || v.Type() == reflect.TypeOf(AutoApprove{}) {
		return
	}
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.IsZero() {
			set[prefix+"."+v.Type().Field(i).Name] = true
		}
		collectSetFields(f, v.Type().Field(i).Type.String(), set)
	}
}

// TestGoTypesMatchSchemas proves there is no drift between the Go types and
// the schemas: a fully populated value of each type marshals to a document
// its schema accepts, every key it writes is declared by the schema, and
// every property the schema declares is written by the type.
func TestGoTypesMatchSchemas(t *testing.T) {
	t.Parallel()
	for name, values := range fullValues() {
		t.Run(name, func(t *testing.T) {
			s, err := schemaFor(name)
			require.NoError(t, err)
			root := s.doc.(map[string]any)
			seen := map[string]bool{}
			for _, v := range values {
				data, err := json.Marshal(v)
				require.NoError(t, err)
				require.NoError(t, Validate(name, data), "%s", data)
				var doc any
				require.NoError(t, json.Unmarshal(data, &doc))
				checkDeclared(t, root, root, doc, "", seen)
			}
			declared := map[string]bool{}
			declaredProps(root, root, "", declared, 0)
			for p := range declared {
				assert.True(t, seen[p], "schema declares %q but the Go type never writes it", p)
			}
		})
	}
}

// resolve follows a local $ref.
func resolve(root, node map[string]any) map[string]any {
	for range 8 {
		ref, ok := node["$ref"].(string)
		if !ok {
			return node
		}
		cur := any(root)
		for tok := range strings.SplitSeq(strings.TrimPrefix(ref, "#/"), "/") {
			cur = cur.(map[string]any)[tok]
		}
		node = cur.(map[string]any)
	}
	return node
}

func checkDeclared(t *testing.T, root, node map[string]any, doc any, path string, seen map[string]bool) {
	t.Helper()
	node = resolve(root, node)
	switch d := doc.(type) {
	case map[string]any:
		props, ok := node["properties"].(map[string]any)
		if !ok {
			return // a free-form map such as metadata
		}
		for k, v := range d {
			p := path + "/" + k
			sub, ok := props[k].(map[string]any)
			if !assert.True(t, ok, "Go type writes %q, which the schema does not declare", p) {
				continue
			}
			seen[p] = true
			checkDeclared(t, root, sub, v, p, seen)
		}
	case []any:
		items, ok := node["items"].(map[string]any)
		if !ok {
			return
		}
		for _, v := range d {
			checkDeclared(t, root, items, v, path+"/*", seen)
		}
	}
}

func declaredProps(root, node map[string]any, path string, out map[string]bool, depth int) {
	if depth > 8 {
		return
	}
	node = resolve(root, node)
	if props, ok := node["properties"].(map[string]any); ok {
		for k, sub := range props {
			out[path+"/"+k] = true
			declaredProps(root, sub.(map[string]any), path+"/"+k, out, depth+1)
		}
	}
	if items, ok := node["items"].(map[string]any); ok {
		declaredProps(root, items, path+"/*", out, depth+1)
	}
}

func TestDeadLetterSetJob(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in string
		job      string
		raw      string
	}{
		{"object", ` {"id":"a","prompt":"p"} `, `{"id":"a","prompt":"p"}`, ""},
		{"invalid json", `{"id":"a",`, "", `{"id":"a",`},
		{"array", `[1,2]`, "", `[1,2]`},
		{"string", `"hi"`, "", `"hi"`},
		{"empty", ``, "", ``},
		{"invalid utf-8", "{\"id\":\"\xff\"}", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := DeadLetter{JobID: "a", Reason: "invalid_job", Error: "e", Attempt: 1, Worker: "w", DeadAt: time.Now()}
			d.Raw = "stale"
			d.SetJob([]byte(tc.in))
			assert.Equal(t, tc.job, string(d.Job))
			assert.Equal(t, tc.raw, d.Raw)
			if tc.job == "" {
				assert.Equal(t, tc.in, string(d.Received()), "exactly as received")
			}
			require.NoError(t, Validate("dead", d))
		})
	}
}

func TestAuditKindsMatchSchema(t *testing.T) {
	t.Parallel()
	s, err := schemaFor("audit")
	require.NoError(t, err)
	enum := s.doc.(map[string]any)["properties"].(map[string]any)["kind"].(map[string]any)["enum"].([]any)
	var want []AuditKind
	for _, e := range enum {
		want = append(want, AuditKind(e.(string)))
	}
	require.Equal(t, want, AuditKinds)
}

func TestAuditRecordRules(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 4, 5, 14, 2, 11, 0, time.UTC)
	ok := AuditRecord{Schema: AuditSchemaID, JobID: "j", Seq: 1, Kind: AuditCancel, At: at}
	require.NoError(t, Validate(SchemaAudit, ok))
	data, err := json.Marshal(ok)
	require.NoError(t, err)
	assert.Contains(t, string(data), `"prev":""`, "prev is always written, empty for seq 1")
	assert.NotContains(t, string(data), "approver", "no approver, no field")

	for _, tc := range []struct {
		name  string
		edit  func(*AuditRecord)
		field string
		want  string
	}{
		{"seq 0", func(r *AuditRecord) { r.Seq = 0 }, "seq", "at least 1"},
		{"upper-case prev", func(r *AuditRecord) { r.Prev = strings.Repeat("AB", 32) }, "prev", "64 lowercase hex digits"},
		{"unknown kind", func(r *AuditRecord) { r.Kind = "approved" }, "kind", `must be one of "approval_requested"`},
		{"job record without job", func(r *AuditRecord) { r.JobID = "" }, "job_id", "must not be empty"},
		{"policy record with job", func(r *AuditRecord) { r.Kind = AuditPolicySet }, "job_id", `must be ""`},
		{"refusals without count", func(r *AuditRecord) { r.Kind = AuditRefusalsCounted }, "count", "is required"},
		{"bad code", func(r *AuditRecord) { r.Code = "Bad Code" }, "code", "a short code"},
		{"long reason", func(r *AuditRecord) { r.Reason = strings.Repeat("x", AuditMaxReason+1) }, "reason", "over"},
		{"bad job id", func(r *AuditRecord) { r.JobID = "a b" }, "job_id", "1-128 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.edit(&r)
			err := Validate(SchemaAudit, r)
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			assert.Equal(t, "invalid_audit", verr.Code)
			var found bool
			for _, p := range verr.Problems {
				if p.Field == tc.field && strings.Contains(p.Reason, tc.want) {
					found = true
				}
			}
			assert.True(t, found, "want %s: ...%s... in %v", tc.field, tc.want, verr.Problems)
		})
	}
	_, err = DecodeAudit([]byte(`{"schema":"jetpilot.audit.v1"}`))
	require.ErrorContains(t, err, "decode audit record: invalid audit")
}

func TestEventTypesMatchSchema(t *testing.T) {
	t.Parallel()
	s, err := schemaFor("event")
	require.NoError(t, err)
	enum := s.doc.(map[string]any)["properties"].(map[string]any)["type"].(map[string]any)["enum"].([]any)
	var want []EventType
	for _, e := range enum {
		want = append(want, EventType(e.(string)))
	}
	require.Equal(t, want, EventTypes)
}
