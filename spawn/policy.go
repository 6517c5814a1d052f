package spawn

import (
	"strings"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// BareToolName strips a server prefix: what follows the first "__", if
// anything follows it ("stakpak__run_command" -> "run_command";
// "stakpak__" stays "stakpak__").
func BareToolName(name string) string {
	if i := strings.Index(name, "__"); i >= 0 && i+2 < len(name) {
		return name[i+2:]
	}
	return name
}

// RejectContent is the decision content of a call the policy rejects.
func RejectContent(toolName string) string {
	return "Blocked by profile allowed_tools (tool: " + BareToolName(toolName) + ")"
}

// Verdict is what the policy does with one proposed tool call.
type Verdict int

const (
	// VerdictAccept: run the call unattended.
	VerdictAccept Verdict = iota
	// VerdictReject: refuse it with RejectContent.
	VerdictReject
	// VerdictAsk: leave it pending for a human (pause_on_approval only).
	VerdictAsk
)

func (v Verdict) String() string {
	switch v {
	case VerdictAccept:
		return "accept"
	case VerdictReject:
		return "reject"
	case VerdictAsk:
		return "ask"
	}
	return "unknown"
}

// Policy decides proposed tool calls for one job: the worker's allow-list
// caps the job's (see the package documentation). The zero Policy accepts
// every call.
type Policy struct {
	worker []string // empty: every tool
	pause  bool

	// The job's own list: none set means the job has no list of its own.
	jobLists [][]string // each list must match (allowed_tools, auto_approve list)
	jobAll   bool       // auto_approve "all": a job list that allows every tool
	none     bool       // auto_approve "none": nothing unattended
}

// NewPolicy builds the policy of job on a worker started with
// --allowed-tools workerAllowed.
func NewPolicy(workerAllowed []string, job schemas.Job) Policy {
	p := Policy{worker: cleanList(workerAllowed), pause: job.PauseOnApproval}
	if l := cleanList(job.AllowedTools); len(l) > 0 {
		p.jobLists = append(p.jobLists, l)
	}
	if job.Overrides != nil && job.Overrides.AutoApprove != nil {
		switch aa := job.Overrides.AutoApprove; aa.Mode {
		case schemas.AutoApproveNone:
			p.none = true
		case schemas.AutoApproveAll:
			p.jobAll = true
		default: // a list
			l := cleanList(aa.Tools)
			if len(l) == 0 {
				// An explicit empty list approves nothing unattended.
				p.none = true
			} else {
				p.jobLists = append(p.jobLists, l)
			}
		}
	}
	return p
}

func cleanList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// listMatches reports whether an entry of list equals the call's full or
// bare name.
func listMatches(list []string, toolName string) bool {
	bare := BareToolName(toolName)
	for _, e := range list {
		if e == toolName || e == bare {
			return true
		}
	}
	return false
}

// inWorkerList: an empty worker list allows every tool.
func (p Policy) inWorkerList(toolName string) bool {
	return len(p.worker) == 0 || listMatches(p.worker, toolName)
}

// hasJobList reports whether the job named tools of its own (allowed_tools,
// an auto_approve list, or auto_approve "all").
func (p Policy) hasJobList() bool { return len(p.jobLists) > 0 || p.jobAll }

// inEffectiveList: the job's list (or the worker's, for a job with none)
// intersected with the worker's.
func (p Policy) inEffectiveList(toolName string) bool {
	if p.none {
		return false
	}
	for _, l := range p.jobLists {
		if !listMatches(l, toolName) {
			return false
		}
	}
	return p.inWorkerList(toolName)
}

// Verdict says what to do with a call to toolName.
func (p Policy) Verdict(toolName string) Verdict {
	if p.pause {
		if p.hasJobList() && p.inEffectiveList(toolName) {
			return VerdictAccept
		}
		return VerdictAsk
	}
	if p.inEffectiveList(toolName) {
		return VerdictAccept
	}
	return VerdictReject
}

// Decide is the verdict for a job without pause_on_approval: accept, or
// reject (with RejectContent). With pause_on_approval it reports whether the
// call is accepted at once.
func (p Policy) Decide(toolName string) (accept bool) {
	return p.Verdict(toolName) == VerdictAccept
}
