package spawn

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

func TestBareToolName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"stakpak__run_command": "run_command",
		"run_command":          "run_command",
		"stakpak__":            "stakpak__",
		"a__b__c":              "b__c",
		"__x":                  "x",
		"":                     "",
	} {
		assert.Equal(t, want, BareToolName(in), in)
	}
	assert.Equal(t, "Blocked by profile allowed_tools (tool: run_command)", RejectContent("stakpak__run_command"))
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	aa := func(mode string, tools ...string) *schemas.Overrides {
		return &schemas.Overrides{AutoApprove: &schemas.AutoApprove{Mode: mode, Tools: tools}}
	}
	type call struct {
		tool string
		want Verdict
	}
	tests := []struct {
		name   string
		worker []string
		job    schemas.Job
		calls  []call
	}{
		{"no lists: everything", nil, schemas.Job{}, []call{{"anything", VerdictAccept}, {"stakpak__x", VerdictAccept}}},
		{"worker list caps a job without one", []string{"view", "stakpak__run_command"}, schemas.Job{},
			[]call{{"stakpak__view", VerdictAccept}, {"view", VerdictAccept}, {"stakpak__run_command", VerdictAccept},
				{"run_command", VerdictReject}, {"other__run_command", VerdictReject}, {"stakpak__delete", VerdictReject}}},
		{"job narrows", []string{"view", "run_command"}, schemas.Job{AllowedTools: []string{"view"}},
			[]call{{"stakpak__view", VerdictAccept}, {"stakpak__run_command", VerdictReject}}},
		{"job cannot widen", []string{"view"}, schemas.Job{AllowedTools: []string{"view", "run_command"}},
			[]call{{"view", VerdictAccept}, {"run_command", VerdictReject}}},
		{"job list with empty worker list", nil, schemas.Job{AllowedTools: []string{"view"}},
			[]call{{"stakpak__view", VerdictAccept}, {"write", VerdictReject}}},
		{"auto_approve list acts as allowed list", []string{"view", "write"}, schemas.Job{Overrides: aa(schemas.AutoApproveList, "write")},
			[]call{{"write", VerdictAccept}, {"view", VerdictReject}}},
		{"auto_approve list and allowed_tools both apply", nil, schemas.Job{AllowedTools: []string{"a", "b"}, Overrides: aa(schemas.AutoApproveList, "b", "c")},
			[]call{{"b", VerdictAccept}, {"a", VerdictReject}, {"c", VerdictReject}}},
		{"auto_approve all is capped by the worker", []string{"view"}, schemas.Job{Overrides: aa(schemas.AutoApproveAll)},
			[]call{{"view", VerdictAccept}, {"write", VerdictReject}}},
		{"auto_approve none rejects everything", nil, schemas.Job{AllowedTools: []string{"view"}, Overrides: aa(schemas.AutoApproveNone)},
			[]call{{"view", VerdictReject}, {"x", VerdictReject}}},
		{"pause: job list accepted, rest asks", []string{"view", "write"}, schemas.Job{PauseOnApproval: true, AllowedTools: []string{"view"}},
			[]call{{"stakpak__view", VerdictAccept}, {"write", VerdictAsk}, {"delete", VerdictAsk}}},
		{"pause: no job list, everything asks", nil, schemas.Job{PauseOnApproval: true},
			[]call{{"view", VerdictAsk}}},
		{"pause: job list outside worker list asks", []string{"view"}, schemas.Job{PauseOnApproval: true, AllowedTools: []string{"write"}},
			[]call{{"write", VerdictAsk}, {"view", VerdictAsk}}},
		{"pause: auto_approve all within worker list", []string{"view"}, schemas.Job{PauseOnApproval: true, Overrides: aa(schemas.AutoApproveAll)},
			[]call{{"view", VerdictAccept}, {"write", VerdictAsk}}},
		{"pause: auto_approve none asks everything", nil, schemas.Job{PauseOnApproval: true, AllowedTools: []string{"view"}, Overrides: aa(schemas.AutoApproveNone)},
			[]call{{"view", VerdictAsk}}},
		{"empty auto_approve list approves nothing", nil, schemas.Job{Overrides: aa(schemas.AutoApproveList)},
			[]call{{"view", VerdictReject}}},
		{"blank entries ignored", []string{" ", ""}, schemas.Job{AllowedTools: []string{""}},
			[]call{{"view", VerdictAccept}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPolicy(tc.worker, tc.job)
			for _, c := range tc.calls {
				assert.Equal(t, c.want.String(), p.Verdict(c.tool).String(), c.tool)
				assert.Equal(t, c.want == VerdictAccept, p.Decide(c.tool), c.tool)
			}
		})
	}
}
