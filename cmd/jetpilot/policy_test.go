package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// example is a file of schemas/examples.
func example(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join("..", "..", "schemas", "examples", name)
	_, err := os.Stat(p)
	require.NoError(t, err)
	return p
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// runPolicy runs jetpilot policy ARGS against url and returns stdout,
// stderr and the exit code.
func runPolicy(t *testing.T, url, stdin string, args ...string) (string, string, int) {
	t.Helper()
	stdout, stderr, code, err := tryRun(nil, stdin, append(append([]string{"policy"}, args...), "--nats", url)...)
	require.NoError(t, err)
	return stdout, stderr, code
}

func TestPolicySetAndGet(t *testing.T) {
	t.Parallel()
	s, _, _ := testnats.Start(t)
	url := testnats.URL(s)
	prod, freeze := example(t, "policy-production.yaml"), example(t, "policy-freeze.yaml")

	// Nothing stored (no bucket, even): said clearly, exit 1.
	stdout, stderr, code := runPolicy(t, url, "", "get")
	assert.Equal(t, 1, code)
	assert.Empty(t, stdout)
	assert.Contains(t, stderr, "no policy is stored in KV bucket jetpilot_policy: workers use the policy of their flags")
	stdout, _, code = runPolicy(t, url, "", "get", "--json")
	assert.Equal(t, 1, code)
	assert.JSONEq(t, `{"bucket":"jetpilot_policy","stored":false}`, stdout)

	stdout, stderr, code = runPolicy(t, url, "", "set", prod)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "policy version 1 stored (no policy was stored before)\n", stdout)
	stdout, stderr, code = runPolicy(t, url, "", "set", freeze)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "policy version 2 stored (replaced version 1)\n", stdout)

	// get prints the document exactly as stored (YAML, comments and all)
	// on stdout, and its version on stderr.
	stdout, stderr, code = runPolicy(t, url, "", "get")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, readFile(t, freeze), stdout)
	assert.Regexp(t, `^policy version 2, stored \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ in KV bucket jetpilot_policy\n$`, stderr)
	stdout, _, code = runPolicy(t, url, "", "get", "--version", "1")
	require.Equal(t, 0, code)
	assert.Equal(t, readFile(t, prod), stdout)
	_, stderr, code = runPolicy(t, url, "", "get", "--version", "99")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "version 99 of the policy is not in KV bucket jetpilot_policy")

	stdout, _, code = runPolicy(t, url, "", "get", "--json")
	require.Equal(t, 0, code)
	var got struct {
		Bucket   string `json:"bucket"`
		Stored   bool   `json:"stored"`
		Version  uint64 `json:"version"`
		Text     string `json:"text"`
		Document struct {
			Tools struct {
				Default string `json:"default"`
			} `json:"tools"`
		} `json:"document"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &got), stdout)
	assert.True(t, got.Stored)
	assert.EqualValues(t, 2, got.Version)
	assert.Equal(t, readFile(t, freeze), got.Text)
	assert.Equal(t, "deny", got.Document.Tools.Default)

	// --if-version: an admin who edited version 1 does not overwrite 2.
	_, stderr, code = runPolicy(t, url, "", "set", prod, "--if-version", "1")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "the stored policy changed: version 2 is stored, not version 1 as expected; nothing was stored")
	stdout, stderr, code = runPolicy(t, url, "", "set", prod, "--if-version", "2")
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "policy version 3 stored (replaced version 2)\n", stdout)

	// A malformed policy: every problem on stderr, exit 2, nothing stored.
	bad := writeFile(t, "bad.yaml", `version: 1
tools:
  default: approve
  rules:
    - {name: a, match: {tools: [run_command], args: {command: 'ls ('}}, action: allow}
    - {name: a, match: {tools: [view]}, action: deny, approvers: {groups: [sre]}}
jobs: {max_timeout: soon}
`)
	stdout, stderr, code = runPolicy(t, url, "", "set", bad)
	assert.Equal(t, 2, code)
	assert.Empty(t, stdout)
	assert.Equal(t, "jetpilot: invalid policy "+bad+"; nothing was stored:\n"+
		"  tools/rules/0/match/args/command: not an RE2 pattern: error parsing regexp: missing closing ): `ls (`\n"+
		"  tools/rules/1/name: \"a\" is also the name of rule 0; rule names must be unique\n"+
		"  tools/rules/1/approvers: only an approve rule names approvers (this rule's action is deny)\n"+
		"  tools/rules/1/approvers/groups/0: no approver is in group \"sre\"\n"+
		"  jobs/max_timeout: \"soon\" is not a Go duration such as \"90s\" or \"2h\"\n", stderr)
	_, stderr, code = runPolicy(t, url, "", "set", writeFile(t, "schema.yaml", "version: 1\ntools: {default: maybe}\njobs: {bogus: 1}\n"))
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "\n  jobs: unknown field \"bogus\"\n")
	assert.Contains(t, stderr, "\n  tools/default: must be one of \"allow\", \"approve\", \"deny\" (got \"maybe\")\n")

	// JSON from stdin, and --json.
	stdout, stderr, code = runPolicy(t, url, readFile(t, example(t, "policy-dev.json")), "set", "-", "--json")
	require.Equal(t, 0, code, stderr)
	assert.JSONEq(t, `{"bucket":"jetpilot_policy","version":4,"replaced":3}`, stdout)

	// A document written around `policy set` is shown, with its problems.
	s2, _, js := testnats.Start(t)
	_, stderr, code = runPolicy(t, testnats.URL(s2), "", "set", prod)
	require.Equal(t, 0, code, stderr)
	ctx := testsupport.Context(t, waitFor)
	kv, err := js.KeyValue(ctx, "jetpilot_policy")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "policy", []byte("version: 1\ntools: {default: yes}\n\x1b[2J"))
	require.NoError(t, err)
	stdout, stderr, code = runPolicy(t, testnats.URL(s2), "", "get")
	assert.Equal(t, 1, code)
	assert.Equal(t, "version: 1\ntools: {default: yes}\n\\x1b[2J\n", stdout, "control characters are escaped")
	assert.Contains(t, stderr, "jetpilot: policy version 2 does not parse; workers refuse work until a valid policy is stored:\n")

	// Usage errors.
	_, _, code = runPolicy(t, url, "", "set")
	assert.Equal(t, 2, code)
	_, stderr, code = runPolicy(t, url, "", "set", filepath.Join(t.TempDir(), "missing.yaml"))
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "read policy: open ")
}

// jobFile writes a job document.
func jobFile(t *testing.T, job string) string { return writeFile(t, "job.json", job) }

func TestPolicyTest(t *testing.T) {
	t.Parallel()
	s, _, _ := testnats.Start(t)
	url := testnats.URL(s)
	_, stderr, code := runPolicy(t, url, "", "set", example(t, "policy-production.yaml"))
	require.Equal(t, 0, code, stderr)
	const header = "policy version 1 (stored in KV bucket jetpilot_policy)\n"
	const acceptedDefaults = "job deploy-2: accepted\n" +
		"  model: claude-sonnet-4-5 (the policy's, the job names none)\n" +
		"  max_turns: 64 (the policy's jobs.max_turns, the job sets none)\n" +
		"  workdir: /srv/repos (the policy's first jobs.workdir_roots, the job sets none)\n" +
		"  timeout: 2h0m0s (the policy's jobs.max_timeout, the job sets none)\n"
	good := jobFile(t, `{"id":"deploy-2","prompt":"roll out","sandbox":true}`)

	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		out   string
		code  int
	}{
		{
			name: "job rejected for a workdir outside the roots",
			args: []string{"test", jobFile(t, `{"id":"deploy-1","prompt":"x","sandbox":true,"workdir":"/etc/ssh","timeout":"3h"}`)},
			out: header + "job deploy-1: rejected (policy_violation)\n" +
				"  workdir: \"/etc/ssh\" is outside the policy's jobs.workdir_roots [\"/srv/repos\"]\n" +
				"  timeout: 3h is over the policy's jobs.max_timeout of 2h0m0s\n",
			code: 2,
		},
		{
			name: "accepted: what the policy fills in",
			args: []string{"test", good},
			out:  header + acceptedDefaults,
			code: 0,
		},
		{
			name: "the job's own values",
			args: []string{"test", "-"},
			stdin: `{"id":"deploy-3","prompt":"x","sandbox":true,"workdir":"/srv/repos/api","timeout":"15m",` +
				`"overrides":{"model":"claude-sonnet-4-5","max_turns":10}}`,
			out: header + "job deploy-3: accepted\n" +
				"  model: claude-sonnet-4-5 (the job's overrides.model)\n" +
				"  max_turns: 10 (the job's)\n" +
				"  workdir: /srv/repos/api (the job's)\n" +
				"  timeout: 15m0s (the job's)\n",
			code: 0,
		},
		{
			name: "a call denied by an args rule",
			args: []string{"test", good, "--call", "stakpak__run_command", `{"command":"cd /srv && rm -rf build"}`},
			out: header + acceptedDefaults +
				"call stakpak__run_command {\"command\":\"cd /srv && rm -rf build\"}: reject (rule never-rm-rf)\n" +
				"  the model reads: Blocked by policy (rule never-rm-rf, tool: run_command): recursive or forced deletes are never run by an agent; ask a human to do it\n",
			code: 3,
		},
		{
			name: "a call matched by an approve rule",
			args: []string{"test", good, "--call", "run_command", `{"command":"kubectl apply -f deploy.yaml"}`},
			out: header + acceptedDefaults +
				"call run_command {\"command\":\"kubectl apply -f deploy.yaml\"}: ask (rule prod-change)\n" +
				"  approvers: alice, bob, carol; quorum 2; the job's requester may not be one of them\n",
			code: 0,
		},
		{
			name: "a call allowed by a rule",
			args: []string{"test", good, "--call", "run_command", `{"command":"kubectl get pods -n prod"}`},
			out:  header + acceptedDefaults + "call run_command {\"command\":\"kubectl get pods -n prod\"}: accept (rule kubectl-read)\n",
			code: 0,
		},
		{
			name:  "a tool no rule names asks any approver; control characters escaped",
			args:  []string{"test", "-", "--call", "view\x1b[2J", `{"path":"/srv"}`},
			stdin: `{"id":"deploy-4","prompt":"x","sandbox":true,"allowed_tools":["search_docs"]}`,
			out: header + strings.ReplaceAll(acceptedDefaults, "deploy-2", "deploy-4") +
				"call view\\x1b[2J {\"path\":\"/srv\"}: ask (no rule matched: the policy's tools.default)\n" +
				"  approvers: alice, bob, carol, dave; quorum 1; the job's requester may be one of them\n",
			code: 0,
		},
		{
			name: "the job rejected and the call decided",
			args: []string{"test", jobFile(t, `{"id":"deploy-5","prompt":"x"}`), "--call", "view", `{}`},
			out: header + "job deploy-5: rejected (policy_violation)\n" +
				"  sandbox: the policy's jobs.sandbox is required: the job must set sandbox to true (without it tools run on the agent server's host)\n" +
				"call view {}: accept (rule read-only)\n",
			code: 2,
		},
		{
			name:  "--file: a policy not stored, and a call the job's list refuses",
			args:  []string{"test", "-", "--file", example(t, "policy-dev.json"), "--call", "run_command", `{"command":"make"}`},
			stdin: `{"id":"dev-1","prompt":"x","allowed_tools":["view"]}`,
			out: "policy from " + example(t, "policy-dev.json") + " (not stored)\n" +
				"job dev-1: accepted\n" +
				"  model: (none: the agent server's default)\n" +
				"  max_turns: 128 (the policy's jobs.max_turns, the job sets none)\n" +
				"  workdir: /tmp (the policy's first jobs.workdir_roots, the job sets none)\n" +
				"  timeout: 30m0s (the policy's jobs.max_timeout, the job sets none)\n" +
				"call run_command {\"command\":\"make\"}: reject (no rule matched: the policy's tools.default)\n" +
				"  the policy allows it; the job's allowed_tools or overrides.auto_approve leave it out\n" +
				"  the model reads: Blocked by profile allowed_tools (tool: run_command)\n",
			code: 3,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runPolicy(t, url, tc.stdin, tc.args...)
			assert.Equal(t, tc.out, stdout, "stderr: %s", stderr)
			assert.Equal(t, tc.code, code, "stderr: %s", stderr)
		})
	}

	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"test"},
			{"test", good, `{}`},
			{"test", good, "--call", "view", "not json"},
			{"test", good, "--file", writeFile(t, "bad.yaml", "version: 2\n")},
			{"test", jobFile(t, `{"id":"bad id","prompt":""}`)},
		} {
			stdout, stderr, code := runPolicy(t, url, "", args...)
			assert.Equal(t, 2, code, "%v: %s", args, stderr)
			assert.Empty(t, stdout, args)
		}
		_, stderr, _ := runPolicy(t, url, "", "test", jobFile(t, `{"id":"bad id","prompt":""}`))
		assert.Contains(t, stderr, "would be rejected as invalid:\n  id: must be")
	})

	t.Run("no policy stored: the built-in one, said so", func(t *testing.T) {
		s2, _, _ := testnats.Start(t)
		stdout, stderr, code, err := tryRun([]string{"JETPILOT_CALL=run_command"}, "", "policy", "test", good, "--nats", testnats.URL(s2))
		require.NoError(t, err)
		assert.Equal(t, 3, code, stderr) // the call is rejected
		assert.Equal(t, "no policy is stored in KV bucket jetpilot_policy: the built-in policy (workers started with --allowed-tools or --max-timeout use those instead)\n"+
			"job deploy-2: accepted\n"+
			"  model: (none: the agent server's default)\n"+
			"  max_turns: (none: the agent server's default)\n"+
			"  workdir: (none: the agent server's default)\n"+
			"  timeout: 1h0m0s (the policy's jobs.max_timeout, the job sets none)\n"+
			"call run_command {}: reject (no rule matched: the policy's tools.default)\n"+
			"  the model reads: Blocked by policy (rule default, tool: run_command): it needs approval, and no approvers are configured for it\n", stdout)
	})
}

// Every policy set lands in the audit stream's policy chain, which
// `jetpilot audit --policy` prints and verifies.
func TestPolicySetIsAudited(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	require.NoError(t, queue.Setup(t.Context(), js, queue.Config{}))
	for _, f := range []string{"policy-production.yaml", "policy-freeze.yaml"} {
		_, stderr, code := runPolicy(t, url, "", "set", example(t, f))
		require.Zero(t, code, stderr)
		assert.NotContains(t, stderr, "not audited")
	}
	stdout, stderr, code, err := tryRun(nil, "", "audit", "--policy", "--nats", url)
	require.NoError(t, err)
	require.Zero(t, code, stderr)
	assert.Contains(t, stdout, "policy_set")
	assert.Contains(t, stdout, "replaced version 1")
	assert.Contains(t, stdout, "chain intact")
}
