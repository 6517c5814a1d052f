package policy

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// CodeViolation is the error code of a job rejected for asking more than
// the policy allows.
const CodeViolation = "policy_violation"

// CheckJob lists every field of job that asks for more than the policy
// allows, each naming the cap, as one *schemas.ValidationError (code
// policy_violation); nil when the job is within the policy.
func (p *Policy) CheckJob(job schemas.Job) error {
	var problems []schemas.FieldError
	bad := func(field, format string, args ...any) {
		problems = append(problems, schemas.FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	caps := p.doc.Jobs
	if roots := caps.WorkdirRoots; len(roots) > 0 && job.Workdir != "" {
		switch {
		case !strings.HasPrefix(job.Workdir, "/"):
			bad("workdir", "%q is not an absolute path; the policy's jobs.workdir_roots are %s", job.Workdir, quoteList(roots))
		case hasDotDot(job.Workdir):
			bad("workdir", "%q contains \"..\", which the policy refuses; write the path inside %s", job.Workdir, quoteList(roots))
		case !underRoot(path.Clean(job.Workdir), roots):
			bad("workdir", "%q is outside the policy's jobs.workdir_roots %s", job.Workdir, quoteList(roots))
		}
	}
	if models := caps.Models; len(models) > 0 {
		if job.Model != "" && !slices.Contains(models, job.Model) {
			bad("model", "%q is not one of the policy's jobs.models %s", job.Model, quoteList(models))
		}
		if ov := job.Overrides; ov != nil && ov.Model != "" && !slices.Contains(models, ov.Model) {
			bad("overrides/model", "%q is not one of the policy's jobs.models %s", ov.Model, quoteList(models))
		}
	}
	if caps.Sandbox == "required" && !job.Sandbox {
		bad("sandbox", "the policy's jobs.sandbox is required: the job must set sandbox to true (without it tools run on the agent server's host)")
	}
	ov := job.Overrides
	if caps.SystemPrompt == "forbidden" && ov != nil && strings.TrimSpace(ov.SystemPrompt) != "" {
		bad("overrides/system_prompt", "the policy's jobs.system_prompt is forbidden: a job may not replace the agent server's system prompt")
	}
	if caps.MaxTurns > 0 && ov != nil && ov.MaxTurns > caps.MaxTurns {
		bad("overrides/max_turns", "%d is over the policy's jobs.max_turns of %d", ov.MaxTurns, caps.MaxTurns)
	}
	if d, err := job.TimeoutDuration(); err == nil && d > p.maxTimeout {
		bad("timeout", "%s is over the policy's jobs.max_timeout of %s", job.Timeout, p.maxTimeout)
	}
	if cc := caps.CallerContext; cc != nil {
		if cc.MaxItems != nil && len(job.CallerContext) > *cc.MaxItems {
			bad("caller_context", "%d items, over the policy's jobs.caller_context.max_items of %d", len(job.CallerContext), *cc.MaxItems)
		}
		if cc.MaxChars != nil {
			n := 0
			for _, c := range job.CallerContext {
				n += utf8.RuneCountInString(c.Content)
			}
			if n > *cc.MaxChars {
				bad("caller_context", "%d characters of content, over the policy's jobs.caller_context.max_chars of %d", n, *cc.MaxChars)
			}
		}
	}
	if len(job.Metadata) > 0 {
		if n, limit := metadataBytes(job.Metadata), p.MaxMetadataBytes(); n > limit {
			bad("metadata", "%d bytes encoded, over the limit of %d (the policy's jobs.max_metadata_bytes)", n, limit)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &schemas.ValidationError{Code: CodeViolation, Problems: problems}
}

func metadataBytes(m map[string]string) int {
	data, err := schemas.Encode(m)
	if err != nil {
		return 0
	}
	return len(data)
}

func underRoot(dir string, roots []string) bool {
	for _, r := range roots {
		if r == "/" || dir == r || strings.HasPrefix(dir, r+"/") {
			return true
		}
	}
	return false
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Apply returns the job with the policy's values sent explicitly where the
// job left them out (the agent server's own defaults are not the
// operator's): the first of jobs.models, jobs.max_turns, the first of
// jobs.workdir_roots. Check the job with CheckJob first.
func (p *Policy) Apply(job schemas.Job) schemas.Job {
	caps := p.doc.Jobs
	hasModel := job.Model != "" || (job.Overrides != nil && job.Overrides.Model != "")
	if len(caps.Models) > 0 && !hasModel {
		job.Model = caps.Models[0]
	}
	if caps.MaxTurns > 0 && (job.Overrides == nil || job.Overrides.MaxTurns == 0) {
		ov := schemas.Overrides{}
		if job.Overrides != nil {
			ov = *job.Overrides
		}
		ov.MaxTurns = caps.MaxTurns
		job.Overrides = &ov
	}
	if len(caps.WorkdirRoots) > 0 && job.Workdir == "" {
		job.Workdir = caps.WorkdirRoots[0]
	}
	return job
}

// MaxTimeout caps every job's timeout, and is the timeout of a job that
// sets none.
func (p *Policy) MaxTimeout() time.Duration { return p.maxTimeout }

// Timeout is job's effective timeout: its own, or MaxTimeout when it sets
// none (CheckJob refuses one over the cap).
func (p *Policy) Timeout(job schemas.Job) time.Duration {
	d, err := job.TimeoutDuration()
	if err != nil || d <= 0 || d > p.maxTimeout {
		return p.maxTimeout
	}
	return d
}

// MaxTokens is one job's token budget; 0: none.
func (p *Policy) MaxTokens() int64 { return p.doc.Jobs.MaxTokens }

// MaxPaused caps the runs waiting for a human, fleet-wide.
func (p *Policy) MaxPaused() int {
	if p.doc.Jobs.MaxPaused > 0 {
		return p.doc.Jobs.MaxPaused
	}
	return DefaultMaxPaused
}

// MaxMetadataBytes caps a job's metadata, encoded.
func (p *Policy) MaxMetadataBytes() int {
	if m := p.doc.Jobs.MaxMetadataBytes; m != nil && *m < MaxMetadataBytes {
		return *m
	}
	return MaxMetadataBytes
}

// DefaultConcurrency is the runs at once per concurrency_key when the
// policy sets no default.
const DefaultConcurrency = 4

// ConcurrencyLimit is how many runs of key may run at once, fleet-wide.
func (p *Policy) ConcurrencyLimit(key string) int {
	c := p.doc.Concurrency
	if c == nil {
		return DefaultConcurrency
	}
	if n, ok := c.Keys[key]; ok {
		return n
	}
	if c.Default > 0 {
		return c.Default
	}
	return DefaultConcurrency
}

// Signed reports whether decisions must be signed by an approver.
func (p *Policy) Signed() bool { return p.doc.Decisions != DecisionsUnsigned }

// ApproverByKey names the approver whose public key is key.
func (p *Policy) ApproverByKey(key string) (name string, ok bool) {
	for n, a := range p.doc.Approvers {
		if a.Key == key {
			return n, true
		}
	}
	return "", false
}

// ProducerByKey names the producer whose public key is key.
func (p *Policy) ProducerByKey(key string) (name string, ok bool) {
	for n, pr := range p.doc.Producers {
		if pr.Key == key {
			return n, true
		}
	}
	return "", false
}

// ApproverKey is the public key of the named approver.
func (p *Policy) ApproverKey(name string) (key string, ok bool) {
	a, ok := p.doc.Approvers[name]
	return a.Key, ok
}

// AllApprovers lists every approver by name, sorted.
func (p *Policy) AllApprovers() []string { return p.eligible(nil) }
