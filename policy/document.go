package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Action is what a rule does with a call it matches.
type Action string

const (
	// Allow runs the call unattended (a job's own lists may still narrow it).
	Allow Action = "allow"
	// Approve pauses the run for the rule's approvers, whatever the job says.
	Approve Action = "approve"
	// Deny refuses the call; the model learns why.
	Deny Action = "deny"
)

// Decisions modes.
const (
	// DecisionsSigned applies only decisions signed by an approver the
	// matching rule allows.
	DecisionsSigned = "signed"
	// DecisionsUnsigned applies any decision: for development only.
	DecisionsUnsigned = "unsigned"
)

// Caps a document may lower but not raise, and the defaults of the ones it
// leaves out.
const (
	// DefaultMaxPaused is jobs.max_paused when the document sets none.
	DefaultMaxPaused = 1000
	// MaxMetadataBytes is the default and the ceiling of
	// jobs.max_metadata_bytes: metadata is echoed on every result, approval
	// and dead letter, so a large one would crowd the agent's text out.
	MaxMetadataBytes = 16 << 10
	// DefaultMaxTimeout is jobs.max_timeout when neither the document nor a
	// worker flag sets one.
	DefaultMaxTimeout = time.Hour
)

// Document is the policy as written (schemas/policy.v1.json).
type Document struct {
	Schema      string              `json:"schema,omitempty"`
	Version     int                 `json:"version"`
	Tools       ToolsSection        `json:"tools"`
	Approvers   map[string]Approver `json:"approvers,omitempty"`
	Producers   map[string]Producer `json:"producers,omitempty"`
	Decisions   string              `json:"decisions,omitempty"`
	Jobs        JobCaps             `json:"jobs,omitzero"`
	Concurrency *Concurrency        `json:"concurrency,omitempty"`
}

// ToolsSection holds the tool rules.
type ToolsSection struct {
	Default      Action   `json:"default"`
	BarePrefixes []string `json:"bare_prefixes,omitempty"`
	Rules        []Rule   `json:"rules,omitempty"`
}

// Rule is one tool rule.
type Rule struct {
	Name      string          `json:"name"`
	Match     Match           `json:"match"`
	Action    Action          `json:"action"`
	Reason    string          `json:"reason,omitempty"`
	Approvers *ApproverPolicy `json:"approvers,omitempty"`
}

// Match says which calls a rule is about.
type Match struct {
	Tools []string          `json:"tools"`
	Args  map[string]string `json:"args,omitempty"`
}

// ApproverPolicy says who may decide an approve rule's calls.
type ApproverPolicy struct {
	Groups              []string `json:"groups,omitempty"`
	Names               []string `json:"names,omitempty"`
	Quorum              int      `json:"quorum,omitempty"`
	RequesterMayApprove *bool    `json:"requester_may_approve,omitempty"`
}

// Approver is a person who may decide approve rules.
type Approver struct {
	Key    string   `json:"key"`
	Groups []string `json:"groups,omitempty"`
}

// Producer is a job publisher that signs its jobs.
type Producer struct {
	Key string `json:"key"`
}

// JobCaps caps what a job may ask for.
type JobCaps struct {
	WorkdirRoots     []string     `json:"workdir_roots,omitempty"`
	Models           []string     `json:"models,omitempty"`
	Sandbox          string       `json:"sandbox,omitempty"`
	SystemPrompt     string       `json:"system_prompt,omitempty"`
	MaxTurns         int          `json:"max_turns,omitempty"`
	MaxTimeout       string       `json:"max_timeout,omitempty"`
	MaxTokens        int64        `json:"max_tokens,omitempty"`
	MaxPaused        int          `json:"max_paused,omitempty"`
	CallerContext    *ContextCaps `json:"caller_context,omitempty"`
	MaxMetadataBytes *int         `json:"max_metadata_bytes,omitempty"`
}

// ContextCaps caps a job's caller_context.
type ContextCaps struct {
	MaxItems *int `json:"max_items,omitempty"`
	MaxChars *int `json:"max_chars,omitempty"`
}

// Concurrency limits runs per concurrency_key, fleet-wide.
type Concurrency struct {
	Default int            `json:"default,omitempty"`
	Keys    map[string]int `json:"keys,omitempty"`
}

// Parse reads a policy document, YAML or JSON, and compiles it. A bad one
// yields a *schemas.ValidationError (code "invalid_policy") listing every
// problem, field by field.
func Parse(data []byte) (*Policy, error) {
	js, err := toJSON(data)
	if err != nil {
		return nil, err
	}
	if err := schemas.Validate(schemas.SchemaPolicy, js); err != nil {
		return nil, err
	}
	var doc Document
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, invalid(schemas.FieldError{Reason: fmt.Sprintf("decode: %v", err)})
	}
	return Compile(doc)
}

// toJSON turns a YAML or JSON document into JSON. JSON is YAML, but the
// JSON path keeps the schema's byte positions and duplicate-key check.
func toJSON(data []byte) ([]byte, error) {
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		return data, nil
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, invalid(schemas.FieldError{Reason: fmt.Sprintf("not valid YAML or JSON: %v", err)})
	}
	return js, nil
}

func invalid(problems ...schemas.FieldError) error {
	return &schemas.ValidationError{Code: "invalid_policy", Problems: problems}
}

// Compile checks what the schema cannot (patterns, durations, names) and
// builds the Policy. Its problems come as one *schemas.ValidationError.
func Compile(doc Document) (*Policy, error) {
	p := &Policy{doc: doc, rules: make([]compiledRule, 0, len(doc.Tools.Rules))}
	var problems []schemas.FieldError
	bad := func(field, format string, args ...any) {
		problems = append(problems, schemas.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if !validAction(doc.Tools.Default) {
		bad("tools/default", "must be allow, approve or deny (got %q)", doc.Tools.Default)
	}
	p.barePrefixes = doc.Tools.BarePrefixes
	groups := map[string]bool{}
	for _, a := range doc.Approvers {
		for _, g := range a.Groups {
			groups[g] = true
		}
	}
	seen := map[string]int{}
	for i, r := range doc.Tools.Rules {
		f := fmt.Sprintf("tools/rules/%d", i)
		if j, dup := seen[r.Name]; dup {
			bad(f+"/name", "%q is also the name of rule %d; rule names must be unique", r.Name, j)
		}
		seen[r.Name] = i
		if !validAction(r.Action) {
			bad(f+"/action", "must be allow, approve or deny (got %q)", r.Action)
		}
		cr := compiledRule{name: r.Name, action: r.Action, reason: r.Reason, index: i}
		for _, t := range r.Match.Tools {
			if t == "*" {
				cr.anyTool = true
			}
		}
		cr.tools = slices.Clone(r.Match.Tools)
		for _, field := range slices.Sorted(maps.Keys(r.Match.Args)) {
			pat := r.Match.Args[field]
			// Whole-field match. In deny and approve rules "." also
			// matches a newline, so a command split over lines cannot
			// slip past a pattern written for one line.
			flags := ""
			if r.Action != Allow {
				flags = "(?s)"
			}
			if _, err := regexp.Compile(pat); err != nil {
				bad(f+"/match/args/"+field, "not an RE2 pattern: %v", err)
				continue
			}
			re, err := regexp.Compile(flags + `^(?:` + pat + `)$`)
			if err != nil {
				bad(f+"/match/args/"+field, "not an RE2 pattern: %v", err)
				continue
			}
			cr.args = append(cr.args, argMatch{field: field, re: re})
		}
		if r.Approvers != nil {
			if r.Action != Approve {
				bad(f+"/approvers", "only an approve rule names approvers (this rule's action is %s)", r.Action)
			}
			for k, g := range r.Approvers.Groups {
				if !groups[g] {
					bad(fmt.Sprintf("%s/approvers/groups/%d", f, k), "no approver is in group %q", g)
				}
			}
			for k, n := range r.Approvers.Names {
				if _, ok := doc.Approvers[n]; !ok {
					bad(fmt.Sprintf("%s/approvers/names/%d", f, k), "%q is not listed under approvers", n)
				}
			}
		}
		cr.approvers, cr.mayReq = p.eligible(r.Approvers), true
		if r.Approvers != nil {
			cr.quorumN = r.Approvers.Quorum
			if r.Approvers.RequesterMayApprove != nil {
				cr.mayReq = *r.Approvers.RequesterMayApprove
			}
		}
		if q := cr.quorum(); r.Action == Approve && len(cr.approvers) > 0 && q > len(cr.approvers) {
			bad(f+"/approvers/quorum", "needs %d distinct approvers but only %d may approve this rule", q, len(cr.approvers))
		}
		p.rules = append(p.rules, cr)
	}
	keys := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(doc.Approvers)) {
		k := doc.Approvers[name].Key
		if other, dup := keys[k]; dup {
			bad("approvers/"+name+"/key", "the same key as approver %q; one key, one person", other)
		}
		keys[k] = name
	}
	caps := doc.Jobs
	for i, root := range caps.WorkdirRoots {
		if clean := path.Clean(root); clean != root || hasDotDot(root) {
			bad(fmt.Sprintf("jobs/workdir_roots/%d", i), "%q is not a clean absolute path (write %q)", root, clean)
		}
	}
	p.maxTimeout = DefaultMaxTimeout
	if caps.MaxTimeout != "" {
		d, err := time.ParseDuration(caps.MaxTimeout)
		switch {
		case err != nil:
			bad("jobs/max_timeout", "%q is not a Go duration such as \"90s\" or \"2h\"", caps.MaxTimeout)
		case d <= 0:
			bad("jobs/max_timeout", "must be positive (got %s)", caps.MaxTimeout)
		default:
			p.maxTimeout = d
		}
	}
	if len(problems) > 0 {
		return nil, invalid(problems...)
	}
	return p, nil
}

func validAction(a Action) bool { return a == Allow || a == Approve || a == Deny }

func hasDotDot(p string) bool {
	return slices.Contains(strings.Split(p, "/"), "..")
}

// eligible lists the approvers (by name, sorted) an approve rule allows:
// those named, and those in a group named; all of them when the rule
// names neither.
func (p *Policy) eligible(ap *ApproverPolicy) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(p.doc.Approvers)) {
		a := p.doc.Approvers[name]
		if ap == nil || (len(ap.Groups) == 0 && len(ap.Names) == 0) ||
			slices.Contains(ap.Names, name) || slices.ContainsFunc(a.Groups, func(g string) bool { return slices.Contains(ap.Groups, g) }) {
			out = append(out, name)
		}
	}
	return out
}
