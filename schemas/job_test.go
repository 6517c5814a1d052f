package schemas

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// job is a valid minimal job with extra members spliced in.
func job(extra string) string {
	if extra == "" {
		return `{"id":"j1","prompt":"p"}`
	}
	return `{"id":"j1","prompt":"p",` + extra + `}`
}

// contextItems renders n caller_context items with content of size chars.
func contextItems(n, size int) string {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"name":"c%d","content":%q}`, i, strings.Repeat("x", size))
	}
	return `"caller_context":[` + strings.Join(items, ",") + `]`
}

func TestDecodeJobInvalid(t *testing.T) {
	long := strings.Repeat("a", 131)
	cases := []struct {
		name   string
		doc    string
		field  string
		reason string // a fragment of the reason
		n      int    // how many problems in all; 0 means 1
	}{
		{"truncated JSON", `{"id":"a",`, "", "invalid JSON: unexpected end of input at line 1, column 11 (offset 10)", 0},
		{"syntax error", `{"id":"a" "prompt":"x"}`, "", "invalid JSON at line 1, column 11 (offset 10): invalid character '\"' after object key:value pair", 0},
		{"syntax error on line 2", "{\"id\":\"a\",\n  \"prompt\": x}", "", "invalid JSON at line 2, column 13", 0},
		{"empty message", ``, "", "empty message: want a JSON object", 0},
		{"whitespace only", " \n\t", "", "empty message", 0},
		{"array", `[]`, "", "must be a JSON object (got an array)", 0},
		{"null", `null`, "", "must be a JSON object (got null)", 0},
		{"two values", `{"id":"a","prompt":"x"}{}`, "", "unexpected data after the top-level value at line 1, column 24", 0},
		{"trailing garbage", `{"id":"a","prompt":"x"} x`, "", "unexpected data after the top-level value at line 1, column 25 (offset 24)", 0},
		{"missing id", `{"prompt":"p"}`, "id", "is required", 0},
		{"missing prompt", `{"id":"j1"}`, "prompt", "is required", 0},
		{"id too long", `{"id":"` + long + `","prompt":"p"}`, "id", "must be 1-128 characters of A-Za-z0-9._:- (got 131 characters)", 0},
		{"id with space", `{"id":"a b","prompt":"p"}`, "id", `(got "a b": a space is not allowed)`, 0},
		{"id with slash", `{"id":"a/b","prompt":"p"}`, "id", `'/' is not allowed`, 0},
		{"id with unicode", `{"id":"jöb","prompt":"p"}`, "id", `'ö' is not allowed`, 0},
		{"id with tab", `{"id":"a\tb","prompt":"p"}`, "id", `control character U+0009 is not allowed`, 0},
		{"id with subject wildcard", `{"id":"a*","prompt":"p"}`, "id", `'*' is not allowed`, 0},
		{"id empty", `{"id":"","prompt":"p"}`, "id", "(got an empty string)", 0},
		{"id number", `{"id":42,"prompt":"p"}`, "id", "must be 1-128 characters of A-Za-z0-9._:- (got a number)", 0},
		{"id duplicated, last invalid", `{"id":"ok","id":"not ok","prompt":"p"}`, "id", `(got "not ok"`, 2},
		{"duplicate id", `{"id":"bad id","id":"good","prompt":"p"}`, "", `duplicate key "id"`, 0},
		{"duplicate prompt", `{"id":"j1","prompt":"look","prompt":"rm -rf /"}`, "", `duplicate key "prompt"`, 0},
		{"duplicate key spelt with an escape", `{"id":"j1","prompt":"a","\u0070rompt":"b"}`, "", `duplicate key "prompt"`, 0},
		{"duplicate metadata key", job(`"metadata":{"a":"1","b":"2","a":"3"}`), "metadata", `duplicate key "a"`, 0},
		{"duplicate key in an override", job(`"overrides":{"model":"a","model":"b"}`), "overrides", `duplicate key "model"`, 0},
		{"duplicate key in a context item", job(`"caller_context":[{"name":"a","content":"x"},{"name":"b","content":"y","name":"c"}]`),
			"caller_context/1", `duplicate key "name"`, 0},
		{"duplicate key inside an unknown field", job(`"x":{"k":[{"q":1,"q":2}]}`), "x/k/0", `duplicate key "q"`, 2},
		{"prompt empty", `{"id":"j1","prompt":""}`, "prompt", "must not be empty", 0},
		{"prompt blank", `{"id":"j1","prompt":" \n\t "}`, "prompt", "must not be only whitespace", 0},
		{"prompt over 1 MiB", `{"id":"j1","prompt":"` + strings.Repeat("a", MaxPromptBytes+1) + `"}`, "prompt",
			"1,048,577 bytes, over the limit of 1,048,576 bytes (1 MiB)", 0},
		{"prompt over 1 MiB in bytes, not characters", `{"id":"j1","prompt":"` + strings.Repeat("€", 600_000) + `"}`, "prompt",
			"1,800,000 bytes, over the limit of 1,048,576 bytes (1 MiB)", 0},
		{"prompt number", `{"id":"j1","prompt":7}`, "prompt", "must be a string (got a number)", 0},
		{"prompt null", `{"id":"j1","prompt":null}`, "prompt", "must be a string (got null)", 0},
		{"unknown field", job(`"promt":"x"`), "", `unknown field "promt" (did you mean "prompt"?)`, 0},
		{"unknown field, no guess", job(`"color":"red"`), "", `unknown field "color"`, 0},
		{"field in wrong case", `{"ID":"j1","prompt":"p"}`, "", `unknown field "ID" (did you mean "id"?)`, 2},
		{"unknown override", job(`"overrides":{"modle":"m"}`), "overrides", `unknown field "modle" (did you mean "model"?)`, 0},
		{"unknown context field", job(`"caller_context":[{"name":"n","content":"c","prio":"high"}]`), "caller_context/0", `unknown field "prio"`, 0},
		{"schema id wrong", job(`"schema":"jetpilot.job.v2"`), "schema", `must be "jetpilot.job.v1" (got "jetpilot.job.v2")`, 0},
		{"profile with dot", job(`"profile":"a.b"`), "profile", `must be 1-64 characters of A-Za-z0-9_- (one NATS subject token) (got "a.b": '.' is not allowed)`, 0},
		{"profile too long", job(`"profile":"` + strings.Repeat("p", 65) + `"`), "profile", "(got 65 characters)", 0},
		{"profile empty", job(`"profile":""`), "profile", "(got an empty string)", 0},
		{"timeout words", job(`"timeout":"5 minutes"`), "timeout", `"5 minutes" is not a Go duration such as "90s" or "1h30m"`, 0},
		{"timeout without unit", job(`"timeout":"300"`), "timeout", `"300" is not a Go duration`, 0},
		{"timeout zero", job(`"timeout":"0s"`), "timeout", `must be greater than zero (got "0s")`, 0},
		{"timeout negative", job(`"timeout":"-5m"`), "timeout", `must be greater than zero (got "-5m")`, 0},
		{"timeout number", job(`"timeout":300`), "timeout", "must be a string (got a number)", 0},
		{"timeout empty", job(`"timeout":""`), "timeout", "must not be empty", 0},
		{"sandbox string", job(`"sandbox":"yes"`), "sandbox", "must be a boolean (got a string)", 0},
		{"pause_on_approval number", job(`"pause_on_approval":1`), "pause_on_approval", "must be a boolean (got a number)", 0},
		{"workdir number", job(`"workdir":1`), "workdir", "must be a string (got a number)", 0},
		{"allowed_tools string", job(`"allowed_tools":"view"`), "allowed_tools", "must be an array (got a string)", 0},
		{"allowed_tools empty name", job(`"allowed_tools":["view",""]`), "allowed_tools/1", "must not be empty", 0},
		{"allowed_tools number", job(`"allowed_tools":[1]`), "allowed_tools/0", "must be a string (got a number)", 0},
		{"context not array", job(`"caller_context":{}`), "caller_context", "must be an array (got an object)", 0},
		{"context too many", job(contextItems(33, 1)), "caller_context", "33 items, over the agent server's limit of 32", 0},
		{"context name too long", job(`"caller_context":[{"name":"` + strings.Repeat("n", 257) + `","content":"c"}]`), "caller_context/0/name",
			"257 characters, over the agent server's limit of 256", 0},
		{"context name empty", job(`"caller_context":[{"name":"","content":"c"}]`), "caller_context/0/name", "must not be empty", 0},
		{"context content too long", job(`"caller_context":[{"name":"a","content":"a"},{"name":"b","content":"b"},{"name":"c","content":"` +
			strings.Repeat("c", 50_001) + `"}]`), "caller_context/2/content", "50,001 characters, over the agent server's limit of 50,000", 0},
		{"context content counted in characters", job(`"caller_context":[{"name":"a","content":"` + strings.Repeat("é", 50_001) + `"}]`),
			"caller_context/0/content", "50,001 characters", 0},
		{"context total too long", job(contextItems(11, 50_000)), "caller_context",
			"contents add up to 550,000 characters, over the agent server's limit of 500,000 in total", 0},
		{"context content missing", job(`"caller_context":[{"name":"a"}]`), "caller_context/0/content", "is required", 0},
		{"context item not object", job(`"caller_context":["text"]`), "caller_context/0", "must be an object (got a string)", 0},
		{"overrides string", job(`"overrides":"fast"`), "overrides", "must be an object (got a string)", 0},
		{"max_turns zero", job(`"overrides":{"max_turns":0}`), "overrides/max_turns", "must be an integer between 1 and 256 (got 0)", 0},
		{"max_turns too big", job(`"overrides":{"max_turns":257}`), "overrides/max_turns", "must be an integer between 1 and 256 (got 257)", 0},
		{"max_turns fraction", job(`"overrides":{"max_turns":1.5}`), "overrides/max_turns", "must be an integer (got a number)", 0},
		{"max_turns with a million digits", job(`"overrides":{"max_turns":` + strings.Repeat("9", 1_000_000) + `}`), "overrides/max_turns",
			"number 9999999999999999999999999999999999999999… is out of range (at most 32 characters and an exponent of ±400)", 0},
		{"max_turns with a huge exponent", job(`"overrides":{"max_turns":1e999999}`), "overrides/max_turns", "number 1e999999 is out of range", 0},
		{"huge number in metadata", job(`"metadata":{"a":1e-999999}`), "metadata/a", "number 1e-999999 is out of range", 0},
		{"huge number as the message", `1e999999`, "", "number 1e999999 is out of range", 0},
		{"max_turns string", job(`"overrides":{"max_turns":"10"}`), "overrides/max_turns", "must be an integer (got a string)", 0},
		{"system prompt too long", job(`"overrides":{"system_prompt":"` + strings.Repeat("s", 32_769) + `"}`), "overrides/system_prompt",
			"32,769 characters, over the agent server's limit of 32,768", 0},
		{"auto_approve word", job(`"overrides":{"auto_approve":"some"}`), "overrides/auto_approve", `must be "all", "none" or a list of tool names (got "some")`, 0},
		{"auto_approve number", job(`"overrides":{"auto_approve":5}`), "overrides/auto_approve", `must be "all", "none" or a list of tool names (got a number)`, 0},
		{"auto_approve object", job(`"overrides":{"auto_approve":{"view":true}}`), "overrides/auto_approve", `(got an object)`, 0},
		{"auto_approve empty name", job(`"overrides":{"auto_approve":["view",""]}`), "overrides/auto_approve/1", "must not be empty", 0},
		{"metadata not object", job(`"metadata":["a"]`), "metadata", "must be an object (got an array)", 0},
		{"metadata number value", job(`"metadata":{"channel":7}`), "metadata/channel", "must be a string (got a number)", 0},
		{"metadata key with slash", job(`"metadata":{"a/b":null}`), "metadata/a~1b", "must be a string (got null)", 0},
		{"metadata empty key", job(`"metadata":{"":"x"}`), "metadata", `key "" is not allowed: keys must be 1-256 characters (got an empty string)`, 0},
		{"metadata key too long", job(`"metadata":{"` + strings.Repeat("k", 257) + `":"x"}`), "metadata",
			`is not allowed: keys must be 1-256 characters (got 257 characters)`, 0},
		{"requested_by with space", job(`"requested_by":"Zoë M"`), "requested_by", `must be 1-128 characters of A-Za-z0-9._@- (got "Zoë M"`, 0},
		{"requested_by empty", job(`"requested_by":""`), "requested_by", "(got an empty string)", 0},
		{"requested_by too long", job(`"requested_by":"` + strings.Repeat("r", 129) + `"`), "requested_by", "(got 129 characters)", 0},
		{"signature without key", job(`"signature":{"sig":"` + strings.Repeat("a", 86) + `"}`), "signature/key", "is required", 0},
		{"signature sig short", job(`"signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"abc"}`), "signature/sig", "base64url without padding", 0},
		{"signature key of an account", job(`"signature":{"key":"A` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `"}`),
			"signature/key", "an nkey user public key", 0},
		{"signature unknown member", job(`"signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `","by":"me"}`),
			"signature", `unknown field "by"`, 0},
	}
	require.GreaterOrEqual(t, len(cases), 30)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeJob([]byte(tc.doc))
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			want := max(tc.n, 1)
			require.Len(t, verr.Problems, want, "problems: %v", verr.Problems)
			found := false
			for _, p := range verr.Problems {
				if p.Field == tc.field && strings.Contains(p.Reason, tc.reason) {
					found = true
				}
			}
			require.True(t, found, "want a problem on %q containing %q, got %v", tc.field, tc.reason, verr.Problems)
			assert.Equal(t, "invalid_job", verr.Code)
			assert.LessOrEqual(t, len(err.Error()), 4096, "messages stay readable even for huge input")
		})
	}
}

// TestDecodeJobEveryProblem: one bad job gets one answer naming all of
// what is wrong with it, in path order.
func TestDecodeJobEveryProblem(t *testing.T) {
	doc := `{"id":"a b","promt":"x","timeout":"5 minutes","caller_context":[{"name":"","content":5},{}],` +
		`"overrides":{"auto_approve":"some","max_turns":300,"modle":"x"},"metadata":{"a":1}}`
	j, err := DecodeJob([]byte(doc))
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	want := []FieldError{
		{Field: "", Reason: `unknown field "promt" (did you mean "prompt"?)`},
		{Field: "caller_context/0/content", Reason: "must be a string (got a number)"},
		{Field: "caller_context/0/name", Reason: "must not be empty"},
		{Field: "caller_context/1/content", Reason: "is required"},
		{Field: "caller_context/1/name", Reason: "is required"},
		{Field: "id", Reason: `must be 1-128 characters of A-Za-z0-9._:- (got "a b": a space is not allowed)`},
		{Field: "metadata/a", Reason: "must be a string (got a number)"},
		{Field: "overrides", Reason: `unknown field "modle" (did you mean "model"?)`},
		{Field: "overrides/auto_approve", Reason: `must be "all", "none" or a list of tool names (got "some")`},
		{Field: "overrides/max_turns", Reason: "must be an integer between 1 and 256 (got 300)"},
		{Field: "prompt", Reason: "is required"},
		{Field: "timeout", Reason: `"5 minutes" is not a Go duration such as "90s" or "1h30m"`},
	}
	require.Equal(t, want, verr.Problems)
	require.Equal(t, `invalid job: unknown field "promt" (did you mean "prompt"?); caller_context/0/content: must be a string (got a number); `+
		`caller_context/0/name: must not be empty; caller_context/1/content: is required; caller_context/1/name: is required; `+
		`id: must be 1-128 characters of A-Za-z0-9._:- (got "a b": a space is not allowed); metadata/a: must be a string (got a number); `+
		`overrides: unknown field "modle" (did you mean "model"?); overrides/auto_approve: must be "all", "none" or a list of tool names (got "some"); `+
		`overrides/max_turns: must be an integer between 1 and 256 (got 300); prompt: is required; `+
		`timeout: "5 minutes" is not a Go duration such as "90s" or "1h30m"`, err.Error())
	assert.Equal(t, Job{}, j, "neither id nor metadata is usable")

	e := verr.ToError()
	assert.Equal(t, "invalid_job", e.Code)
	assert.Equal(t, err.Error(), e.Message)
	assert.Equal(t, want, e.Fields)
	require.NoError(t, Validate("result", Result{JobID: "x", Status: StatusRejected, ExitCode: StatusRejected.ExitCode(), Error: e}),
		"a rejection built from it is a valid result")
}

func TestDecodeJobProblemsAreCapped(t *testing.T) {
	tools := make([]string, 200)
	for i := range tools {
		tools[i] = `""`
	}
	_, err := DecodeJob([]byte(job(`"allowed_tools":[` + strings.Join(tools, ",") + `]`)))
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Problems, maxProblems+1)
	assert.Equal(t, "allowed_tools/0", verr.Problems[0].Field)
	assert.Equal(t, "allowed_tools/49", verr.Problems[49].Field, "numeric path segments sort as numbers")
	assert.Equal(t, FieldError{Reason: "and 150 more problems"}, verr.Problems[maxProblems])
}

// TestDecodeJobPartial: an invalid job still says who it is, so its
// rejection reaches the right subject and chat thread.
func TestDecodeJobPartial(t *testing.T) {
	j, err := DecodeJob([]byte(`{"id":"job-7","prompt":"","metadata":{"thread":"T1"}}`))
	require.Error(t, err)
	assert.Equal(t, Job{ID: "job-7", Metadata: map[string]string{"thread": "T1"}}, j)

	j, err = DecodeJob([]byte(`{"id":"job-7","metadata":{"thread":1}}`))
	require.Error(t, err)
	assert.Equal(t, Job{ID: "job-7"}, j, "metadata with a problem is not echoed")

	j, err = DecodeJob([]byte(`{"id":"job-7","prompt":`))
	require.Error(t, err)
	assert.Equal(t, Job{ID: "job-7"}, j, "the id is found even when the JSON breaks later")

	j, err = DecodeJob([]byte(`{"id":"job 7","prompt":"p"}`))
	require.Error(t, err)
	assert.Equal(t, "", j.ID, "an invalid id is never returned")
}

func TestDecodeJobValid(t *testing.T) {
	exact := strings.Repeat("€", MaxPromptBytes/3) + strings.Repeat("a", MaxPromptBytes%3)
	require.Len(t, exact, MaxPromptBytes)
	cases := []struct {
		name  string
		doc   string
		check func(t *testing.T, j Job)
	}{
		{"minimal", job(""), func(t *testing.T, j Job) {
			assert.Equal(t, Job{ID: "j1", Prompt: "p"}, j)
			assert.Equal(t, DefaultProfile, j.ProfileOrDefault())
		}},
		{"every id character", `{"id":"AZaz09._:-","prompt":"p"}`, func(t *testing.T, j Job) { assert.Equal(t, "AZaz09._:-", j.ID) }},
		{"id of 128", `{"id":"` + strings.Repeat("i", 128) + `","prompt":"p"}`, func(t *testing.T, j Job) { assert.Len(t, j.ID, 128) }},
		{"prompt of exactly 1 MiB", `{"id":"j1","prompt":"` + exact + `"}`, func(t *testing.T, j Job) { assert.Len(t, j.Prompt, MaxPromptBytes) }},
		{"schema id", job(`"schema":"jetpilot.job.v1"`), func(t *testing.T, j Job) { assert.Equal(t, JobSchemaID, j.Schema) }},
		{"timeout", job(`"timeout":"1h30m"`), func(t *testing.T, j Job) {
			d, err := j.TimeoutDuration()
			require.NoError(t, err)
			assert.Equal(t, "1h30m0s", d.String())
		}},
		{"32 context items at the limits", job(contextItems(10, 50_000)[:len(contextItems(10, 50_000))-1] + "," +
			strings.TrimSuffix(strings.TrimPrefix(contextItems(22, 0), `"caller_context":[`), "]") + "]"),
			func(t *testing.T, j Job) {
				require.Len(t, j.CallerContext, 32)
				assert.Len(t, j.CallerContext[0].Content, 50_000)
			}},
		{"context name of 256", job(`"caller_context":[{"name":"` + strings.Repeat("n", 256) + `","content":"","priority":"high"}]`),
			func(t *testing.T, j Job) { assert.Equal(t, "high", j.CallerContext[0].Priority) }},
		{"max_turns bounds", job(`"overrides":{"max_turns":256}`), func(t *testing.T, j Job) { assert.Equal(t, 256, j.Overrides.MaxTurns) }},
		{"max_turns as 1.0", job(`"overrides":{"max_turns":1.0}`), func(t *testing.T, j Job) { assert.Equal(t, 1, j.Overrides.MaxTurns) }},
		{"max_turns as 1e2", job(`"overrides":{"max_turns":1e2}`), func(t *testing.T, j Job) { assert.Equal(t, 100, j.Overrides.MaxTurns) }},
		{"system prompt of 32 KiB", job(`"overrides":{"system_prompt":"` + strings.Repeat("s", 32_768) + `"}`),
			func(t *testing.T, j Job) { assert.Len(t, j.Overrides.SystemPrompt, 32_768) }},
		{"signed", job(`"requested_by":"ci-bot@example.com","signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `"}`),
			func(t *testing.T, j Job) {
				assert.Equal(t, "ci-bot@example.com", j.RequestedBy)
				assert.Equal(t, &Signature{Key: "U" + strings.Repeat("A", 55), Sig: strings.Repeat("a", 86)}, j.Signature)
			}},
		{"auto_approve all", job(`"overrides":{"auto_approve":"all"}`), func(t *testing.T, j Job) {
			assert.Equal(t, &AutoApprove{Mode: AutoApproveAll}, j.Overrides.AutoApprove)
		}},
		{"auto_approve none", job(`"overrides":{"auto_approve":"none"}`), func(t *testing.T, j Job) {
			assert.Equal(t, &AutoApprove{Mode: AutoApproveNone}, j.Overrides.AutoApprove)
		}},
		{"auto_approve list", job(`"overrides":{"auto_approve":["view","stakpak__search"]}`), func(t *testing.T, j Job) {
			assert.Equal(t, &AutoApprove{Mode: AutoApproveList, Tools: []string{"view", "stakpak__search"}}, j.Overrides.AutoApprove)
		}},
		{"auto_approve empty list", job(`"overrides":{"auto_approve":[]}`), func(t *testing.T, j Job) {
			assert.Equal(t, &AutoApprove{Mode: AutoApproveList}, j.Overrides.AutoApprove)
		}},
		{"empty overrides", job(`"overrides":{}`), func(t *testing.T, j Job) { assert.True(t, j.Overrides.IsZero()) }},
		{"empty collections are nil", job(`"allowed_tools":[],"caller_context":[],"metadata":{}`), func(t *testing.T, j Job) {
			assert.Nil(t, j.AllowedTools)
			assert.Nil(t, j.CallerContext)
			assert.Nil(t, j.Metadata)
		}},
		{"false booleans", job(`"sandbox":false,"pause_on_approval":false`), func(t *testing.T, j Job) {
			assert.False(t, j.Sandbox)
			assert.False(t, j.PauseOnApproval)
		}},
		{"unicode prompt", `{"id":"j1","prompt":"Résumé 🚀 \u2028 <b>"}`, func(t *testing.T, j Job) {
			assert.Equal(t, "Résumé 🚀 \u2028 <b>", j.Prompt)
		}},
		{"same key in different objects", job(`"metadata":{"model":"a"},"overrides":{"model":"b"},"caller_context":[{"name":"n","content":"c"},{"name":"n","content":"c"}]`),
			func(t *testing.T, j Job) { assert.Equal(t, "b", j.Overrides.Model) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, err := DecodeJob([]byte(tc.doc))
			require.NoError(t, err)
			tc.check(t, j)
			assertJobRoundTrips(t, j)
		})
	}
}

func TestDecodeJobFull(t *testing.T) {
	data, err := os.ReadFile("examples/job-full.json")
	require.NoError(t, err)
	j, err := DecodeJob(data)
	require.NoError(t, err)
	want := Job{
		Schema:          JobSchemaID,
		ID:              "slack:C024BE91L:1712345678.000100",
		Prompt:          "Why is the checkout service returning 502s since the last deploy? Look at the logs and the recent diff, then propose a fix.",
		Profile:         "ops",
		Timeout:         "20m",
		Workdir:         "/srv/checkout",
		Model:           "claude-sonnet-4",
		Sandbox:         true,
		PauseOnApproval: true,
		AllowedTools:    []string{"view", "search_docs", "stakpak__run_command"},
		CallerContext: []ContextItem{
			{Name: "incident", Content: "INC-4411: 502s on /api/checkout since 14:02 UTC", Priority: "high"},
			{Name: "recent deploy", Content: "checkout v2.14.0 deployed at 13:58 UTC by ci"},
		},
		Overrides: &Overrides{
			Model:        "claude-opus-4",
			AutoApprove:  &AutoApprove{Mode: AutoApproveList, Tools: []string{"view", "search_docs"}},
			SystemPrompt: "You are on call. Prefer read-only investigation; ask before changing anything.",
			MaxTurns:     40,
		},
		Metadata: map[string]string{"slack_channel": "C024BE91L", "slack_thread": "1712345678.000100", "requested_by": "U01ABCDEF"},
	}
	require.Equal(t, want, j)
	assert.Equal(t, j.ID, JobIDOf(data))
}

// assertJobRoundTrips: an accepted job marshals to JSON that decodes to
// the same job.
func assertJobRoundTrips(t *testing.T, j Job) {
	t.Helper()
	data, err := json.Marshal(j)
	require.NoError(t, err)
	again, err := DecodeJob(data)
	require.NoError(t, err, "%s", data)
	require.Equal(t, j, again)
}

func TestJobIDOf(t *testing.T) {
	t.Parallel()
	cases := []struct{ doc, want string }{
		{`{"id":"a1","prompt":"p"}`, "a1"},
		{`{"prompt":"p","nested":{"id":"inner"},"list":[{"id":"x"}],"id":"outer"}`, "outer"},
		{`{"id":"a1","prompt":`, "a1"},
		{`{"prompt":"p","id":"a1"`, "a1"},
		{`{"id":"a b"}`, ""},
		{`{"id":5}`, ""},
		{`{"id":{"x":"y"},"prompt":"p"}`, ""},
		{`{"id":"first","id":"second"}`, "second"},
		{`{"id":"first","id":"bad id"}`, ""},
		{`{"i\u0064":"escaped"}`, "escaped"},
		{`["id","a1"]`, ""},
		{`"a1"`, ""},
		{``, ""},
		{`{"prompt":"p"}`, ""},
		{`garbage`, ""},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, JobIDOf([]byte(tc.doc)), tc.doc)
	}
}

func TestValidJobID(t *testing.T) {
	t.Parallel()
	assert.True(t, ValidJobID("a"))
	assert.True(t, ValidJobID("AZaz09._:-"))
	assert.True(t, ValidJobID(strings.Repeat("x", 128)))
	for _, bad := range []string{"", strings.Repeat("x", 129), "a b", "a*", "a>", "a/b", "é", "a\x00"} {
		assert.False(t, ValidJobID(bad), "%q", bad)
	}
}

func TestValidationErrorDefaults(t *testing.T) {
	t.Parallel()
	// The worker builds its own for problems only it can see.
	verr := &ValidationError{Problems: []FieldError{{Field: "profile", Reason: "wrong subject"}}}
	assert.Equal(t, "invalid job: profile: wrong subject", verr.Error())
	assert.Equal(t, &Error{Code: "invalid_job", Message: "invalid job: profile: wrong subject",
		Fields: []FieldError{{Field: "profile", Reason: "wrong subject"}}}, verr.ToError())
}

func TestDecodeJobConcurrent(t *testing.T) {
	data, err := os.ReadFile("examples/job-full.json")
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if _, err := DecodeJob(data); err != nil {
					errs <- err
				}
				if _, err := DecodeJob([]byte(`{"id":"x y"}`)); err == nil {
					errs <- fmt.Errorf("invalid job accepted")
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func BenchmarkDecodeJob(b *testing.B) {
	data, err := os.ReadFile("examples/job-full.json")
	require.NoError(b, err)
	_, err = DecodeJob(data) // compile the schemas outside the timing
	require.NoError(b, err)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeJob(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeJobInvalid(b *testing.B) {
	data := []byte(`{"id":"a b","promt":"x","timeout":"5 minutes","overrides":{"max_turns":300}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeJob(data); err == nil {
			b.Fatal("accepted")
		}
	}
}

// TestDecodeJobDeterministic: the validator walks maps in random order;
// the problems (and their paths) must not depend on it.
func TestDecodeJobDeterministic(t *testing.T) {
	doc := []byte(`{"id":"a b","zz":1,"metadata":{"":"x","b":2},"overrides":{"max_turns":0,"x":1},` +
		`"caller_context":[{"name":""},{"name":"n","content":"c","p":1}],"allowed_tools":[""],"timeout":"x"}`)
	_, first := DecodeJob(doc)
	require.Error(t, first)
	for range 30 {
		_, err := DecodeJob(doc)
		require.Equal(t, first, err)
	}
}

// TestDuplicateKeysNeverFast: a job with a member given twice, at any
// depth, is refused by the fast path and rejected by the full one.
func TestDuplicateKeysNeverFast(t *testing.T) {
	for _, doc := range []string{
		`{"id":"bad id","id":"good","prompt":"p"}`,
		job(`"metadata":{"a":"1","a":"2"}`),
		job(`"metadata":{"a":"1","\u0061":"2"}`),
		job(`"overrides":{"max_turns":3,"max_turns":4}`),
		job(`"caller_context":[{"name":"n","content":"c","content":"d"}]`),
	} {
		_, ok := fastDecodeJob([]byte(doc))
		assert.False(t, ok, doc)
		_, err := DecodeJob([]byte(doc))
		var verr *ValidationError
		require.ErrorAs(t, err, &verr, doc)
		assert.Contains(t, verr.Error(), "duplicate key", doc)
		require.ErrorAs(t, Validate(SchemaJob, []byte(doc)), &verr, doc)
	}
}

func TestJobDigest(t *testing.T) {
	t.Parallel()
	// sha256("abc"), the FIPS 180-2 test vector.
	assert.Equal(t, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", JobDigest([]byte("abc")))
	assert.NotEqual(t, JobDigest([]byte(`{"id":"a","prompt":"p"}`)), JobDigest([]byte(`{"id":"a", "prompt":"p"}`)),
		"the digest is of the bytes, not of the parsed job")
}
