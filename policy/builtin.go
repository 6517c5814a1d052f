package policy

import (
	"fmt"
	"time"
)

// ReadOnlyTools are the agent server's tools that only read: the ones
// Stakpak itself auto-approves as safe. The built-in policy runs them
// unattended and asks a human about everything else.
var ReadOnlyTools = []string{"view", "search_docs", "search_memory", "read_rulebook", "local_code_search", "get_all_tasks", "get_task_details"}

// Sources of a Policy.
const (
	SourceStored  = "stored"
	SourceFlags   = "flags"
	SourceBuiltIn = "built-in"
	SourceDev     = "dev"
)

// Default is the policy of a worker with neither a stored policy nor
// policy flags: read-only tools run and every other call needs an
// approver. It names none, and decisions must be signed (unsigned ones are
// for jetpilot dev only), so until a policy with approvers is stored those
// calls are refused at once with that reason, rather than holding a
// session for an approval nobody can give.
func Default() *Policy {
	p := mustCompile(Document{Version: 1, Decisions: DecisionsSigned, Tools: ToolsSection{
		Default: Approve,
		Rules:   []Rule{{Name: "read-only", Match: Match{Tools: ReadOnlyTools}, Action: Allow}},
	}})
	p.Source = SourceBuiltIn
	return p
}

// Dev is `jetpilot dev`'s policy while none is stored: every call runs
// unattended (a job's own lists still narrow), decisions unsigned. It says
// so at start-up. maxTimeout caps job timeouts (0: DefaultMaxTimeout).
func Dev(maxTimeout ...time.Duration) *Policy {
	doc := Document{Version: 1, Decisions: DecisionsUnsigned, Tools: ToolsSection{Default: Allow}}
	if len(maxTimeout) > 0 && maxTimeout[0] > 0 {
		doc.Jobs.MaxTimeout = maxTimeout[0].String()
	}
	p := mustCompile(doc)
	p.Source = SourceDev
	return p
}

// FromFlags is the policy the worker flags stand for when no policy is
// stored: --allowed-tools runs those tools unattended and refuses every
// other call, as the reference autopilot did (nil: the built-in rules);
// --max-timeout caps job timeouts (0: DefaultMaxTimeout).
func FromFlags(allowedTools []string, maxTimeout time.Duration) (*Policy, error) {
	doc := Default().doc
	var rejectWith func(string) string
	if l := cleanList(allowedTools); len(l) > 0 {
		doc.Tools = ToolsSection{Default: Deny, Rules: []Rule{{Name: "allowed-tools", Match: Match{Tools: l}, Action: Allow}}}
		rejectWith = RejectContent
	}
	if maxTimeout < 0 {
		return nil, fmt.Errorf("max timeout must be positive, got %s", maxTimeout)
	}
	if maxTimeout > 0 {
		doc.Jobs.MaxTimeout = maxTimeout.String()
	}
	p, err := Compile(doc)
	if err != nil {
		return nil, err
	}
	p.Source, p.rejectWith = SourceFlags, rejectWith
	return p, nil
}

func mustCompile(doc Document) *Policy {
	p, err := Compile(doc)
	if err != nil {
		panic(fmt.Sprintf("policy: built-in document does not compile: %v", err))
	}
	return p
}
