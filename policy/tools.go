package policy

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Policy is a compiled policy document: safe for concurrent use, never
// changed once built (a new version is a new Policy).
type Policy struct {
	doc          Document
	rules        []compiledRule
	barePrefixes []string // nil: any prefix counts for allow rules
	maxTimeout   time.Duration

	// Version is the KV revision the policy was stored at; 0 for one built
	// from worker flags or the built-in default.
	Version uint64
	// Source says where the policy came from: "stored", "flags" or
	// "built-in".
	Source string
	// rejectWith, for the flag shorthand, is the reason its default-deny
	// gives (the words the reference autopilot used).
	rejectWith func(tool string) string
}

type compiledRule struct {
	name      string
	index     int
	action    Action
	reason    string
	tools     []string
	anyTool   bool
	args      []argMatch
	approvers []string // eligible approvers, by name
	quorumN   int
	mayReq    bool
}

type argMatch struct {
	field string
	re    *regexp.Regexp
}

func (r *compiledRule) quorum() int {
	if r.quorumN < 1 {
		return 1
	}
	return r.quorumN
}

// Document returns the policy as written.
func (p *Policy) Document() Document { return p.doc }

// DefaultRule names the verdict of a call no rule matched.
const DefaultRule = "default"

// Call is one proposed tool call.
type Call struct {
	Name      string
	Arguments json.RawMessage
}

// Verdict is what the policy's tool rules do with one call, before the
// job's own lists narrow it.
type Verdict struct {
	Action Action
	// Rule is the name of the rule that matched, or DefaultRule.
	Rule string
	// Reason is the text the model reads when the call is refused.
	Reason string
	// For Approve: who may decide (approver names), how many must, and
	// whether the job's requester may be one of them.
	Approvers           []string
	Quorum              int
	RequesterMayApprove bool
	// Version is the policy version that decided.
	Version uint64
}

// Evaluate runs the tool rules on call: the first rule that matches
// decides, else the default.
func (p *Policy) Evaluate(call Call) Verdict {
	var args *parsedArgs
	for i := range p.rules {
		r := &p.rules[i]
		if !p.toolMatches(r, call.Name) {
			continue
		}
		if len(r.args) > 0 {
			if args == nil {
				args = parseArgs(call.Arguments)
			}
			if !r.argsMatch(args) {
				continue
			}
		}
		return p.verdict(r, call.Name)
	}
	v := Verdict{Action: p.doc.Tools.Default, Rule: DefaultRule, Version: p.Version}
	if v.Action == Deny {
		v.Reason = p.denyReason(DefaultRule, "", call.Name)
	}
	if v.Action == Approve {
		v.Approvers, v.Quorum, v.RequesterMayApprove = p.eligible(nil), 1, true
	}
	return v
}

func (p *Policy) verdict(r *compiledRule, tool string) Verdict {
	v := Verdict{Action: r.action, Rule: r.name, Version: p.Version}
	switch r.action {
	case Deny:
		v.Reason = p.denyReason(r.name, r.reason, tool)
	case Approve:
		v.Approvers, v.Quorum, v.RequesterMayApprove = r.approvers, r.quorum(), r.mayReq
	}
	return v
}

func (p *Policy) denyReason(rule, custom, tool string) string {
	if p.rejectWith != nil && rule == DefaultRule {
		return p.rejectWith(tool)
	}
	s := "Blocked by policy (rule " + rule + ", tool: " + BareName(tool) + ")"
	if custom != "" {
		s += ": " + custom
	}
	return s
}

// BareName strips a server prefix: what follows the first "__", if
// anything follows it ("stakpak__run_command" -> "run_command";
// "stakpak__" stays "stakpak__").
func BareName(name string) string {
	if i := strings.Index(name, "__"); i >= 0 && i+2 < len(name) {
		return name[i+2:]
	}
	return name
}

// pinnedBare is the name an allow rule compares: the bare name when the
// prefix is one of bare_prefixes (or any prefix when none are pinned),
// else the full name.
func (p *Policy) pinnedBare(name string) string {
	i := strings.Index(name, "__")
	if i < 0 || i+2 >= len(name) {
		return name
	}
	if p.barePrefixes == nil || slices.Contains(p.barePrefixes, name[:i]) {
		return name[i+2:]
	}
	return name
}

// toolMatches: an allow rule matches the full name, or the bare name after
// a pinned prefix; deny and approve rules match whenever the bare names
// agree, whatever the prefixes, so a crafted prefix cannot slip past them.
func (p *Policy) toolMatches(r *compiledRule, name string) bool {
	if r.anyTool {
		return true
	}
	if r.action == Allow {
		bare := p.pinnedBare(name)
		for _, t := range r.tools {
			if t == name || (t == bare && !strings.Contains(t, "__")) {
				return true
			}
		}
		return false
	}
	bare, last := BareName(name), lastName(name)
	for _, t := range r.tools {
		if t == name || BareName(t) == bare || lastName(t) == last {
			return true
		}
	}
	return false
}

// lastName is what follows the last "__" (a proxied tool's
// "stakpak__proxy__run_command" is run_command), if anything follows.
func lastName(name string) string {
	if i := strings.LastIndex(name, "__"); i >= 0 && i+2 < len(name) {
		return name[i+2:]
	}
	return name
}

// parsedArgs holds a call's top-level string arguments. bad: the arguments
// are not one JSON object with unique keys, so no field can be trusted.
type parsedArgs struct {
	strs map[string]string
	bad  bool
}

// parseArgs reads the top-level string fields of a call's arguments. A
// duplicate key makes the whole object untrustworthy: the agent server may
// read the other copy. It scans instead of decoding, so a large argument
// (a file's content) costs one validity pass and no copies of what no rule
// reads.
func parseArgs(raw json.RawMessage) *parsedArgs {
	pa := &parsedArgs{bad: true}
	if !json.Valid(raw) {
		return pa
	}
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return pa
	}
	pa.strs = make(map[string]string, 4)
	keys := map[string]bool{}
	i = skipSpace(raw, i+1)
	for i < len(raw) && raw[i] != '}' {
		end := stringEnd(raw, i)
		key, ok := unquote(raw[i:end])
		if !ok || keys[key] {
			return pa
		}
		keys[key] = true
		i = skipSpace(raw, skipSpace(raw, end)+1) // past ':'
		vend := valueEnd(raw, i)
		if raw[i] == '"' {
			if s, ok := unquote(raw[i:vend]); ok {
				pa.strs[key] = s
			}
		}
		i = skipSpace(raw, vend)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	pa.bad = false
	return pa
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd is the index just past the JSON string starting at b[i] (valid
// JSON assumed).
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd is the index just past the JSON value starting at b[i] (valid
// JSON assumed).
func valueEnd(b []byte, i int) int {
	if b[i] == '"' {
		return stringEnd(b, i)
	}
	depth := 0
	for j := i; j < len(b); j++ {
		switch b[j] {
		case '"':
			j = stringEnd(b, j) - 1
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return j
			}
			depth--
			if depth == 0 {
				return j + 1
			}
		case ',':
			if depth == 0 {
				return j
			}
		}
	}
	return len(b)
}

// unquote decodes a JSON string literal, without a copy through the
// decoder when it has no escapes.
func unquote(lit []byte) (string, bool) {
	if len(lit) < 2 {
		return "", false
	}
	if bytes.IndexByte(lit, '\\') < 0 {
		return string(lit[1 : len(lit)-1]), true
	}
	var s string
	return s, json.Unmarshal(lit, &s) == nil
}

// argsMatch: every pattern must match its whole field. A missing,
// non-string or untrustworthy field never matches an allow rule and always
// matches a deny or approve rule.
func (r *compiledRule) argsMatch(a *parsedArgs) bool {
	for _, m := range r.args {
		s, ok := a.strs[m.field]
		if a.bad || !ok {
			if r.action == Allow {
				return false
			}
			continue
		}
		if !m.re.MatchString(s) {
			return false
		}
	}
	return true
}

// Kind is what happens to a call once the job's own lists are applied.
type Kind int

const (
	// Accept: run the call unattended.
	Accept Kind = iota
	// Reject: refuse it; the model reads Decision.Content.
	Reject
	// Ask: leave it for a human.
	Ask
)

func (k Kind) String() string {
	switch k {
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	case Ask:
		return "ask"
	}
	return "unknown"
}

// Decision is the policy's answer for one call of one job.
type Decision struct {
	Kind    Kind
	Verdict Verdict
	// Content is what the model reads for a Reject.
	Content string
}

// Decide is the verdict for call in a job with narrowing n: the policy's
// rules first (deny refuses, approve always asks), then the job's lists,
// which can only turn an allow into a reject (or, with pause_on_approval,
// into a question for a human).
func (p *Policy) Decide(n Narrowing, call Call) Decision {
	v := p.Evaluate(call)
	switch v.Action {
	case Deny:
		return Decision{Kind: Reject, Verdict: v, Content: v.Reason}
	case Approve:
		if p.doc.Decisions != DecisionsUnsigned && len(v.Approvers) == 0 {
			return Decision{Kind: Reject, Verdict: v, Content: "Blocked by policy (rule " + v.Rule + ", tool: " + BareName(call.Name) +
				"): it needs approval, and no approvers are configured for it"}
		}
		return Decision{Kind: Ask, Verdict: v}
	}
	if n.allows(call.Name) {
		return Decision{Kind: Accept, Verdict: v}
	}
	if n.Pause {
		return Decision{Kind: Ask, Verdict: v}
	}
	return Decision{Kind: Reject, Verdict: v, Content: RejectContent(call.Name)}
}

// RejectContent is what the model reads when a job's own allowed_tools (or
// the worker's --allowed-tools) leaves a call out: the reference
// autopilot's words.
func RejectContent(tool string) string {
	return "Blocked by profile allowed_tools (tool: " + BareName(tool) + ")"
}

// Narrowing is what a job says about its own tool calls: it can only take
// away from what the policy allows.
type Narrowing struct {
	// Lists: a call must be in each (allowed_tools, an auto_approve list).
	Lists [][]string
	// All: auto_approve "all", a job list that allows everything the
	// policy allows.
	All bool
	// None: auto_approve "none" (or an empty list): nothing unattended.
	None bool
	// Pause: pause_on_approval: what the job's lists leave out waits for a
	// human instead of being refused. Without lists of its own, every call
	// waits.
	Pause bool
}

// NarrowingOf reads a job's narrowing.
func NarrowingOf(job schemas.Job) Narrowing {
	n := Narrowing{Pause: job.PauseOnApproval}
	if l := cleanList(job.AllowedTools); len(l) > 0 {
		n.Lists = append(n.Lists, l)
	}
	if job.Overrides != nil && job.Overrides.AutoApprove != nil {
		switch aa := job.Overrides.AutoApprove; aa.Mode {
		case schemas.AutoApproveNone:
			n.None = true
		case schemas.AutoApproveAll:
			n.All = true
		default:
			if l := cleanList(aa.Tools); len(l) == 0 {
				n.None = true
			} else {
				n.Lists = append(n.Lists, l)
			}
		}
	}
	return n
}

// allows: the policy allowed the call; may it run unattended in this job?
func (n Narrowing) allows(name string) bool {
	if n.None {
		return false
	}
	if n.Pause && len(n.Lists) == 0 && !n.All {
		return false
	}
	for _, l := range n.Lists {
		if !listMatches(l, name) {
			return false
		}
	}
	return true
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
func listMatches(list []string, name string) bool {
	bare := BareName(name)
	for _, e := range list {
		if e == name || e == bare {
			return true
		}
	}
	return false
}
