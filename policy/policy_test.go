package policy_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

const alice = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
const bob = "UBZP2KO3D3DIZWDUMP6ZO2SJ2LF2VIXE3TCA6U6IFCSMN7BVIRFOLGH7"

const production = `
version: 1
tools:
  default: approve
  bare_prefixes: [stakpak]
  rules:
    - {name: read-only, match: {tools: [view, search_docs]}, action: allow}
    - {name: never, match: {tools: [run_command], args: {command: '.*\brm\s+-rf\b.*'}}, action: deny, reason: "never delete recursively"}
    - name: kubectl-read
      match: {tools: [run_command], args: {command: 'kubectl (get|describe|logs) [^;&|$<>` + "`" + `\n]*'}}
      action: allow
    - name: prod-change
      match: {tools: [run_command], args: {command: '(kubectl|helm|terraform) .*'}}
      action: approve
      approvers: {groups: [sre], quorum: 2, requester_may_approve: false}
approvers:
  alice: {key: "` + alice + `", groups: [sre]}
  bob: {key: "` + bob + `", groups: [sre]}
decisions: signed
jobs: {workdir_roots: [/srv/repos], models: [claude-sonnet-4-5], sandbox: required,
       system_prompt: forbidden, max_turns: 64, max_timeout: 2h, max_tokens: 2000000}
`

func mustParse(t testing.TB, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	require.NoError(t, err)
	return p
}

func tcall(name, args string) policy.Call {
	return policy.Call{Name: name, Arguments: json.RawMessage(args)}
}

func TestToolRules(t *testing.T) {
	t.Parallel()
	p := mustParse(t, production)
	for _, tc := range []struct {
		name, tool, args string
		action           policy.Action
		rule             string
	}{
		{"read-only bare", "view", `{"path":"/"}`, policy.Allow, "read-only"},
		{"read-only pinned prefix", "stakpak__view", `{}`, policy.Allow, "read-only"},
		{"another prefix is not bare for allow", "evil__view", `{}`, policy.Approve, policy.DefaultRule},
		{"kubectl read", "stakpak__run_command", `{"command":"kubectl get pods -n prod"}`, policy.Allow, "kubectl-read"},
		{"a longer command does not match the read pattern", "run_command", `{"command":"kubectl get pods; kubectl delete ns prod"}`, policy.Approve, "prod-change"},
		{"a newline does not extend the read pattern", "run_command", `{"command":"kubectl get pods\nrm -rf /"}`, policy.Deny, "never"},
		{"rm -rf denied", "run_command", `{"command":"cd /tmp && rm -rf /"}`, policy.Deny, "never"},
		{"rm -rf on a second line denied", "run_command", `{"command":"echo hi\nrm  -rf /srv"}`, policy.Deny, "never"},
		{"deny sees through any prefix", "evil__run_command", `{"command":"rm -rf /"}`, policy.Deny, "never"},
		{"deny sees through nested prefixes", "stakpak__proxy__run_command", `{"command":"rm -rf /"}`, policy.Deny, "never"},
		{"missing field never allows, always denies", "run_command", `{"cmd":"kubectl get pods"}`, policy.Deny, "never"},
		{"non-string field", "run_command", `{"command":["kubectl","get"]}`, policy.Deny, "never"},
		{"duplicate key: untrusted", "run_command", `{"command":"kubectl get pods","command":"rm -rf /"}`, policy.Deny, "never"},
		{"not an object", "run_command", `"kubectl get pods"`, policy.Deny, "never"},
		{"helm upgrade needs approval", "run_command", `{"command":"helm upgrade api ./chart"}`, policy.Approve, "prod-change"},
		{"unmatched tool: default", "create", `{"path":"/x"}`, policy.Approve, policy.DefaultRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := p.Evaluate(tcall(tc.tool, tc.args))
			assert.Equal(t, tc.action, v.Action)
			assert.Equal(t, tc.rule, v.Rule)
		})
	}
	v := p.Evaluate(tcall("run_command", `{"command":"rm -rf /"}`))
	assert.Equal(t, "Blocked by policy (rule never, tool: run_command): never delete recursively", v.Reason)
	v = p.Evaluate(tcall("run_command", `{"command":"terraform apply"}`))
	assert.Equal(t, []string{"alice", "bob"}, v.Approvers)
	assert.Equal(t, 2, v.Quorum)
	assert.False(t, v.RequesterMayApprove)
}

func TestDecideNarrowing(t *testing.T) {
	t.Parallel()
	p := mustParse(t, production)
	view, kubectl, rm, helm := tcall("view", `{}`), tcall("run_command", `{"command":"kubectl get pods"}`),
		tcall("run_command", `{"command":"rm -rf /"}`), tcall("run_command", `{"command":"helm upgrade x"}`)

	plain := policy.Narrowing{}
	assert.Equal(t, policy.Accept, p.Decide(plain, view).Kind)
	assert.Equal(t, policy.Reject, p.Decide(plain, rm).Kind)
	assert.Equal(t, policy.Ask, p.Decide(plain, helm).Kind, "approve always pauses, whatever the job says")

	// A job's list narrows allow rules only.
	onlyView := policy.NarrowingOf(schemas.Job{AllowedTools: []string{"view"}})
	d := p.Decide(onlyView, kubectl)
	assert.Equal(t, policy.Reject, d.Kind)
	assert.Equal(t, "Blocked by profile allowed_tools (tool: run_command)", d.Content)
	assert.Equal(t, "kubectl-read", d.Verdict.Rule)
	paused := policy.NarrowingOf(schemas.Job{AllowedTools: []string{"view"}, PauseOnApproval: true})
	assert.Equal(t, policy.Ask, p.Decide(paused, kubectl).Kind)
	assert.Equal(t, policy.Accept, p.Decide(paused, view).Kind)

	// Nothing a job says widens: its lists, auto_approve all and
	// pause_on_approval cannot turn a deny into anything else.
	wide := policy.NarrowingOf(schemas.Job{AllowedTools: []string{"run_command"}, PauseOnApproval: true,
		Overrides: &schemas.Overrides{AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveAll}}})
	assert.Equal(t, policy.Reject, p.Decide(wide, rm).Kind)
	assert.Equal(t, policy.Ask, p.Decide(wide, helm).Kind)

	none := policy.NarrowingOf(schemas.Job{Overrides: &schemas.Overrides{AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveNone}}})
	assert.Equal(t, policy.Reject, p.Decide(none, view).Kind)
}

func TestApproveWithoutApprovers(t *testing.T) {
	t.Parallel()
	signed := mustParse(t, `{"version":1,"tools":{"default":"approve"}}`)
	d := signed.Decide(policy.Narrowing{}, tcall("stakpak__create", `{}`))
	assert.Equal(t, policy.Reject, d.Kind)
	assert.Equal(t, "Blocked by policy (rule default, tool: create): it needs approval, and no approvers are configured for it", d.Content)

	unsigned := mustParse(t, `{"version":1,"tools":{"default":"approve"},"decisions":"unsigned"}`)
	assert.Equal(t, policy.Ask, unsigned.Decide(policy.Narrowing{}, tcall("create", `{}`)).Kind)
}

func TestBuiltInAndFlags(t *testing.T) {
	t.Parallel()
	def := policy.Default()
	assert.Equal(t, policy.Accept, def.Decide(policy.Narrowing{}, tcall("stakpak__view", `{}`)).Kind)
	d := def.Decide(policy.Narrowing{}, tcall("stakpak__run_command", `{}`))
	assert.Equal(t, policy.Reject, d.Kind, "with neither flags nor a stored policy, every other call needs an approver, and none is configured")
	assert.Contains(t, d.Content, "no approvers are configured")
	assert.True(t, def.Signed(), "unsigned decisions are for jetpilot dev only")
	assert.False(t, policy.Dev().Signed())
	assert.Equal(t, policy.DefaultMaxTimeout, def.MaxTimeout())

	flags, err := policy.FromFlags([]string{"view"}, 0)
	require.NoError(t, err)
	d = flags.Decide(policy.Narrowing{Pause: true, Lists: [][]string{{"view", "run_command"}}}, tcall("stakpak__run_command", `{}`))
	assert.Equal(t, policy.Reject, d.Kind, "a job's pause_on_approval cannot make a human approve what the worker refuses")
	assert.Equal(t, "Blocked by profile allowed_tools (tool: run_command)", d.Content)
	assert.Equal(t, policy.Accept, flags.Decide(policy.Narrowing{}, tcall("view", `{}`)).Kind)

	_, err = policy.FromFlags(nil, -1)
	require.Error(t, err)
}

func TestCheckJob(t *testing.T) {
	t.Parallel()
	p := mustParse(t, production)
	ok := schemas.Job{ID: "j", Prompt: "p", Workdir: "/srv/repos/api", Sandbox: true}
	require.NoError(t, p.CheckJob(ok))
	applied := p.Apply(ok)
	assert.Equal(t, "claude-sonnet-4-5", applied.Model)
	assert.Equal(t, 64, applied.Overrides.MaxTurns)
	noDir := ok
	noDir.Workdir = ""
	assert.Equal(t, "/srv/repos", p.Apply(noDir).Workdir)

	for _, tc := range []struct {
		name  string
		edit  func(*schemas.Job)
		field string
		want  string
	}{
		{"root", func(j *schemas.Job) { j.Workdir = "/" }, "workdir", `"/" is outside the policy's jobs.workdir_roots ["/srv/repos"]`},
		{"sibling", func(j *schemas.Job) { j.Workdir = "/srv/repos-evil" }, "workdir", `"/srv/repos-evil" is outside the policy's jobs.workdir_roots ["/srv/repos"]`},
		{"dotdot", func(j *schemas.Job) { j.Workdir = "/srv/repos/../../etc" }, "workdir", `"/srv/repos/../../etc" contains "..", which the policy refuses; write the path inside ["/srv/repos"]`},
		{"relative", func(j *schemas.Job) { j.Workdir = "repos" }, "workdir", `"repos" is not an absolute path; the policy's jobs.workdir_roots are ["/srv/repos"]`},
		{"model", func(j *schemas.Job) { j.Model = "gpt-x" }, "model", `"gpt-x" is not one of the policy's jobs.models ["claude-sonnet-4-5"]`},
		{"override model", func(j *schemas.Job) { j.Overrides = &schemas.Overrides{Model: "gpt-x"} }, "overrides/model", `"gpt-x" is not one of the policy's jobs.models ["claude-sonnet-4-5"]`},
		{"sandbox", func(j *schemas.Job) { j.Sandbox = false }, "sandbox", "the policy's jobs.sandbox is required: the job must set sandbox to true (without it tools run on the agent server's host)"},
		{"system prompt", func(j *schemas.Job) { j.Overrides = &schemas.Overrides{SystemPrompt: "you may do anything"} }, "overrides/system_prompt", "the policy's jobs.system_prompt is forbidden: a job may not replace the agent server's system prompt"},
		{"turns", func(j *schemas.Job) { j.Overrides = &schemas.Overrides{MaxTurns: 65} }, "overrides/max_turns", "65 is over the policy's jobs.max_turns of 64"},
		{"timeout", func(j *schemas.Job) { j.Timeout = "3h" }, "timeout", "3h is over the policy's jobs.max_timeout of 2h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := ok
			tc.edit(&j)
			err := p.CheckJob(j)
			var verr *schemas.ValidationError
			require.ErrorAs(t, err, &verr)
			assert.Equal(t, policy.CodeViolation, verr.Code)
			assert.Equal(t, []schemas.FieldError{{Field: tc.field, Reason: tc.want}}, verr.Problems)
		})
	}

	// Every problem at once.
	bad := schemas.Job{ID: "j", Prompt: "p", Workdir: "/etc", Model: "x", Timeout: "5h"}
	var verr *schemas.ValidationError
	require.ErrorAs(t, p.CheckJob(bad), &verr)
	assert.Len(t, verr.Problems, 4)

	capped := mustParse(t, `{"version":1,"tools":{"default":"deny"},"jobs":{"max_metadata_bytes":20,"caller_context":{"max_items":1,"max_chars":3}}}`)
	err := capped.CheckJob(schemas.Job{ID: "j", Prompt: "p", Metadata: map[string]string{"channel": "C0123456789"},
		CallerContext: []schemas.ContextItem{{Name: "a", Content: "abcd"}, {Name: "b", Content: ""}}})
	require.ErrorAs(t, err, &verr)
	assert.Equal(t, []schemas.FieldError{
		{Field: "caller_context", Reason: "2 items, over the policy's jobs.caller_context.max_items of 1"},
		{Field: "caller_context", Reason: "4 characters of content, over the policy's jobs.caller_context.max_chars of 3"},
		{Field: "metadata", Reason: "25 bytes encoded, over the limit of 20 (the policy's jobs.max_metadata_bytes)"},
	}, verr.Problems)
}

func TestParseRefusesBadDocuments(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings of the problems, in order
	}{
		{"not yaml", "version: [1", []string{"not valid YAML or JSON"}},
		{"no tools", `{"version":1}`, []string{"tools"}},
		{"bad action", `{"version":1,"tools":{"default":"maybe"}}`, []string{"tools/default"}},
		{"unknown field", `{"version":1,"tools":{"default":"deny"},"tool":{}}`, []string{"tool"}},
		{"duplicate key", `{"version":1,"tools":{"default":"deny","default":"allow"}}`, []string{"default"}},
		{"bad regex and unknown group", `version: 1
tools:
  default: deny
  rules:
    - {name: a, match: {tools: [x], args: {command: '(('}}, action: deny}
    - {name: a, match: {tools: [z]}, action: approve, approvers: {groups: [ops], quorum: 3}}
approvers: {alice: {key: "` + alice + `", groups: [sre]}}
jobs: {max_timeout: soon, workdir_roots: [/srv/../etc]}`,
			[]string{"jobs/max_timeout", "jobs/workdir_roots/0", "tools/rules/0/match/args/command", "tools/rules/1/approvers/groups/0", "tools/rules/1/name"}},
		{"unreachable quorum", `version: 1
tools: {default: deny, rules: [{name: two, match: {tools: ["*"]}, action: approve, approvers: {groups: [sre], quorum: 2}}]}
approvers: {alice: {key: "` + alice + `", groups: [sre]}}`, []string{"tools/rules/0/approvers/quorum: needs 2 distinct approvers but only 1 may approve this rule"}},
		{"approvers on a deny rule", `version: 1
tools: {default: deny, rules: [{name: d, match: {tools: [x]}, action: deny, approvers: {quorum: 1}}]}`, []string{"tools/rules/0/approvers: only an approve rule names approvers"}},
		{"bad key", `{"version":1,"tools":{"default":"deny"},"approvers":{"a":{"key":"SUxyz"}}}`, []string{"approvers/a/key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := policy.Parse([]byte(tc.doc))
			var verr *schemas.ValidationError
			require.True(t, errors.As(err, &verr), "%v", err)
			assert.Equal(t, "invalid_policy", verr.Code)
			var fields []string
			for _, p := range verr.Problems {
				fields = append(fields, p.Field+": "+p.Reason)
			}
			all := strings.Join(fields, "\n")
			for _, w := range tc.want {
				assert.Contains(t, all, w)
			}
			if tc.name == "bad regex and unknown group" {
				assert.Len(t, verr.Problems, len(tc.want), all)
			}
		})
	}
}

func TestConcurrencyAndPaused(t *testing.T) {
	t.Parallel()
	p := mustParse(t, `{"version":1,"tools":{"default":"deny"},"jobs":{"max_paused":7},"concurrency":{"default":2,"keys":{"env:prod":1}}}`)
	assert.Equal(t, 7, p.MaxPaused())
	assert.Equal(t, 1, p.ConcurrencyLimit("env:prod"))
	assert.Equal(t, 2, p.ConcurrencyLimit("env:dev"))
	assert.Equal(t, policy.DefaultMaxPaused, policy.Default().MaxPaused())
	assert.Equal(t, policy.DefaultConcurrency, policy.Default().ConcurrencyLimit("x"))
}

// BenchmarkDecide is one tool decision under the production policy: the
// call walks four rules and two argument patterns (target: under 10 µs).
func BenchmarkDecide(b *testing.B) {
	p := mustParse(b, production)
	n := policy.NarrowingOf(schemas.Job{AllowedTools: []string{"view", "run_command"}})
	c := tcall("stakpak__run_command", `{"command":"helm upgrade api ./chart --namespace prod --set image.tag=v1.42.0","timeout":300,"description":"roll out"}`)
	b.ReportAllocs()
	for b.Loop() {
		if p.Decide(n, c).Kind != policy.Ask {
			b.Fatal("wrong verdict")
		}
	}
}
