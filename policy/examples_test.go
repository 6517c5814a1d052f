package policy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func parseExample(t *testing.T, name string) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "schemas", "examples", name))
	require.NoError(t, err)
	p, err := policy.Parse(data)
	require.NoError(t, err, name)
	return p
}

// TestExamplesParse: every policy example is valid, and nothing it says
// is lost on the way to a Document (an unknown or misspelt field would be
// refused by the schema; this catches a field the Go type drops).
func TestExamplesParse(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "schemas", "examples", "policy-*"))
	require.NoError(t, err)
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	require.Subset(t, names, []string{"policy-production.yaml", "policy-freeze.yaml", "policy-dev.json"})
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			p := parseExample(t, name)
			data, err := os.ReadFile(filepath.Join("..", "schemas", "examples", name))
			require.NoError(t, err)
			js, err := yaml.YAMLToJSON(data)
			require.NoError(t, err)
			back, err := json.Marshal(p.Document())
			require.NoError(t, err)
			var orig, round map[string]any
			require.NoError(t, json.Unmarshal(js, &orig))
			require.NoError(t, json.Unmarshal(back, &round))
			assert.True(t, reflect.DeepEqual(orig, round), "the document round-trips:\n%s\n%s", js, back)
		})
	}
}

func call(name, command string) policy.Call {
	args, _ := json.Marshal(map[string]string{"command": command})
	return policy.Call{Name: name, Arguments: args}
}

func TestProductionExample(t *testing.T) {
	t.Parallel()
	p := parseExample(t, "policy-production.yaml")
	assert.True(t, p.Signed())
	job := schemas.Job{ID: "j1", Prompt: "p", Sandbox: true}
	n := policy.NarrowingOf(job)
	for _, tc := range []struct {
		call policy.Call
		kind policy.Kind
		rule string
	}{
		{policy.Call{Name: "stakpak__view", Arguments: json.RawMessage(`{"path":"/srv/repos/a"}`)}, policy.Accept, "read-only"},
		{policy.Call{Name: "other__view", Arguments: json.RawMessage(`{}`)}, policy.Ask, policy.DefaultRule},
		{call("run_command", "rm -rf /"), policy.Reject, "never-rm-rf"},
		{call("stakpak__run_command", "cd /tmp && rm -fr build"), policy.Reject, "never-rm-rf"},
		{call("run_command", "rm --recursive x"), policy.Reject, "never-rm-rf"},
		{call("run_command", "kubectl get pods -n prod -o wide"), policy.Accept, "kubectl-read"},
		{call("run_command", "kubectl logs deploy/api -n prod --tail=100"), policy.Accept, "kubectl-read"},
		{call("run_command", "kubectl get secrets -n prod -o yaml"), policy.Ask, "prod-change"},
		{call("run_command", "kubectl get pods; kubectl delete ns prod"), policy.Ask, "prod-change"},
		{call("run_command", "kubectl get pods $(id)"), policy.Ask, "prod-change"},
		{call("run_command", "kubectl get pods\nkubectl delete ns prod"), policy.Ask, "prod-change"},
		{call("run_command", "helm upgrade api ./chart"), policy.Ask, "prod-change"},
		{call("run_command", "echo ok && terraform apply"), policy.Ask, "prod-change"},
		{call("run_command", "ls -la"), policy.Ask, policy.DefaultRule},
		{policy.Call{Name: "str_replace", Arguments: json.RawMessage(`{"path":"/srv/repos/a/x.go"}`)}, policy.Ask, "file-edits"},
	} {
		d := p.Decide(n, tc.call)
		assert.Equal(t, tc.kind, d.Kind, "%s %s", tc.call.Name, tc.call.Arguments)
		assert.Equal(t, tc.rule, d.Verdict.Rule, "%s %s", tc.call.Name, tc.call.Arguments)
	}
	v := p.Evaluate(call("run_command", "kubectl apply -f x.yaml"))
	assert.Equal(t, []string{"alice", "bob", "carol"}, v.Approvers)
	assert.Equal(t, 2, v.Quorum)
	assert.False(t, v.RequesterMayApprove)

	require.Error(t, p.CheckJob(schemas.Job{ID: "j", Prompt: "p"}), "sandbox is required")
	require.NoError(t, p.CheckJob(job))
	applied := p.Apply(job)
	assert.Equal(t, "claude-sonnet-4-5", applied.Model)
	assert.Equal(t, "/srv/repos", applied.Workdir)
	assert.Equal(t, 64, applied.Overrides.MaxTurns)
	assert.EqualValues(t, 2000000, p.MaxTokens())
	assert.Equal(t, 200, p.MaxPaused())
	assert.Equal(t, 1, p.ConcurrencyLimit("env:prod"))
	assert.Equal(t, 4, p.ConcurrencyLimit("team:x"))
}

func TestFreezeExample(t *testing.T) {
	t.Parallel()
	p := parseExample(t, "policy-freeze.yaml")
	n := policy.NarrowingOf(schemas.Job{ID: "j1", Prompt: "p", Sandbox: true, AllowedTools: []string{"run_command", "view"}})
	for _, tool := range []string{"run_command", "stakpak__run_command_async", "create", "str_replace"} {
		d := p.Decide(n, call(tool, "kubectl get pods"))
		assert.Equal(t, policy.Ask, d.Kind, tool)
		assert.Equal(t, "freeze", d.Verdict.Rule, tool)
		assert.Equal(t, []string{"alice", "carol"}, d.Verdict.Approvers)
		assert.Equal(t, 2, d.Verdict.Quorum)
	}
	assert.Equal(t, policy.Accept, p.Decide(n, policy.Call{Name: "view", Arguments: json.RawMessage(`{}`)}).Kind)
	d := p.Decide(n, policy.Call{Name: "generate_code", Arguments: json.RawMessage(`{}`)})
	assert.Equal(t, policy.Reject, d.Kind)
	assert.Equal(t, "Blocked by policy (rule default, tool: generate_code)", d.Content)
}

func TestDevExample(t *testing.T) {
	t.Parallel()
	p := parseExample(t, "policy-dev.json")
	assert.False(t, p.Signed())
	n := policy.NarrowingOf(schemas.Job{ID: "j1", Prompt: "p"})
	assert.Equal(t, policy.Accept, p.Decide(n, call("run_command", "go test ./...")).Kind)
	assert.Equal(t, policy.Reject, p.Decide(n, call("run_command", "rm -rf ~")).Kind)
	assert.Equal(t, policy.Ask, p.Decide(n, call("run_command", "git push origin main")).Kind, "unsigned: asks anyone")
}
