package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
)

// approvalNeed says who may decide the calls a pause waits on, and how
// many must: every approver the calls' rules allow may deny; only one
// whom every rule allows may allow, and the strictest quorum counts. It is
// fixed when the pause is recorded; which key is whose is read from the
// policy in force when a decision comes, so a revoked key stops at once.
func approvalNeed(pol *policy.Policy, pending []schemas.ToolCall) *schemas.ApprovalNeeds {
	need := &schemas.ApprovalNeeds{Quorum: 1, RequesterMayApprove: true, PolicyVersion: pol.Version, Signed: pol.Signed()}
	deny := map[string]bool{}
	for i, c := range pending {
		v := pol.Evaluate(policy.Call{Name: c.Name, Arguments: c.Arguments})
		names := pol.AllApprovers()
		if v.Action == policy.Approve {
			names = v.Approvers
			need.Quorum = max(need.Quorum, v.Quorum)
			need.RequesterMayApprove = need.RequesterMayApprove && v.RequesterMayApprove
		}
		if !slices.Contains(need.Rules, v.Rule) {
			need.Rules = append(need.Rules, v.Rule)
		}
		for _, n := range names {
			deny[n] = true
		}
		if i == 0 {
			need.AllowBy = slices.Clone(names)
		} else {
			need.AllowBy = slices.DeleteFunc(need.AllowBy, func(n string) bool { return !slices.Contains(names, n) })
		}
	}
	for n := range deny {
		need.DenyBy = append(need.DenyBy, n)
	}
	slices.Sort(need.DenyBy)
	return need
}

// vote is what one verified decision says, for the quorum, and who may
// decide the approval (the need it was checked against).
type vote struct {
	approver, key string
	allow         bool
	need          *schemas.ApprovalNeeds
}

// stricter is the stricter of two needs: approvers both allow, the larger
// quorum, the requester excluded if either excludes them. a may be nil.
func stricter(a, b *schemas.ApprovalNeeds) *schemas.ApprovalNeeds {
	if a == nil {
		return b
	}
	out := *a
	out.AllowBy = slices.DeleteFunc(slices.Clone(a.AllowBy), func(n string) bool { return !slices.Contains(b.AllowBy, n) })
	out.DenyBy = slices.DeleteFunc(slices.Clone(a.DenyBy), func(n string) bool { return !slices.Contains(b.DenyBy, n) })
	out.Quorum = max(a.Quorum, b.Quorum)
	out.RequesterMayApprove = a.RequesterMayApprove && b.RequesterMayApprove
	out.Signed = a.Signed || b.Signed
	for _, r := range b.Rules {
		if !slices.Contains(out.Rules, r) {
			out.Rules = append(out.Rules, r)
		}
	}
	return &out
}

// validVotes are the recorded votes that still count: the key still maps
// to that approver in the policy in force, and need still allows them.
func validVotes(pol *policy.Policy, rec *queue.RunRecord, need *schemas.ApprovalNeeds) []queue.Vote {
	var out []queue.Vote
	for _, x := range rec.Votes {
		if name, ok := pol.ApproverByKey(x.Key); ok && name == x.Approver && slices.Contains(need.AllowBy, name) {
			out = append(out, x)
		}
	}
	return out
}

// authorize checks a decision against what is pending and who may decide
// it. Under decisions: unsigned it checks only the digest a decision
// carries. Under signed: the signature must verify, its key must be an
// approver's the calls' rules allow (for an allow: every rule), the
// requester may be refused, and one approver votes once. It returns the
// verified vote (nil under unsigned), or the refusal, with the vote once
// the approver is identified (so the refusal is audited under their name).
func (w *Worker) authorize(rec *queue.RunRecord, d schemas.Decision, raw []byte) (*vote, *schemas.Error) {
	pol := w.Policy()
	if d.PendingDigest != "" && d.PendingDigest != rec.PendingDigest {
		return nil, &schemas.Error{Code: CodeDigestMismatch, Message: fmt.Sprintf(
			"pending_digest %s is not the digest of approval %s's calls (%s): the decision was made for other calls", queue.CapID(d.PendingDigest), rec.ApprovalID, rec.PendingDigest)}
	}
	// A pause published as needing signed decisions keeps needing them,
	// even if a looser policy is stored meanwhile.
	if !pol.Signed() && (rec.Need == nil || !rec.Need.Signed) {
		return nil, nil
	}
	if d.PendingDigest == "" {
		return nil, &schemas.Error{Code: CodeDigestMismatch, Message: "a signed decision must carry the approval's pending_digest"}
	}
	key, err := signing.Verify(raw)
	switch {
	case errors.Is(err, signing.ErrNoSignature):
		return nil, &schemas.Error{Code: CodeSignatureMissing, Message: "the policy requires signed decisions (decisions: signed); sign it with jetpilot approve --key"}
	case errors.Is(err, signing.ErrMalformedSignature):
		return nil, &schemas.Error{Code: CodeSignatureMalformed, Message: err.Error()}
	case err != nil:
		return nil, &schemas.Error{Code: CodeSignatureInvalid, Message: err.Error()}
	}
	name, ok := pol.ApproverByKey(key)
	if !ok {
		return nil, &schemas.Error{Code: CodeUnknownKey, Message: fmt.Sprintf("key %s is not an approver's in policy version %d", key, pol.Version)}
	}
	// Who may decide: what the pause recorded and what the policy in
	// force says, whichever is stricter.
	need := stricter(rec.Need, approvalNeed(pol, rec.Pending))
	v := &vote{approver: name, key: key, allow: isAllow(d), need: need}
	allowed := need.DenyBy
	if v.allow {
		allowed = need.AllowBy
	}
	if !slices.Contains(allowed, name) {
		return v, &schemas.Error{Code: CodeApproverNotAllowed, Message: fmt.Sprintf(
			"approver %s may not %s these calls (rules %v allow %v)", name, verb(v.allow), need.Rules, allowed)}
	}
	if v.allow && !need.RequesterMayApprove {
		switch {
		case rec.RequesterKey == "":
			return v, &schemas.Error{Code: CodeRequesterUnknown, Message: fmt.Sprintf(
				"rules %v do not let the job's requester approve it, and the job was not signed by a listed producer, so its requester is unknown", need.Rules)}
		case rec.RequesterKey == key || rec.Requester == name:
			return v, &schemas.Error{Code: CodeRequesterMayNotApprove, Message: fmt.Sprintf(
				"approver %s asked for this job (requested_by %s); rules %v need someone else", name, rec.Requester, need.Rules)}
		}
	}
	if v.allow && need.Quorum > 1 && d.All == "" {
		return v, &schemas.Error{Code: CodeInvalidDecision, Message: fmt.Sprintf(
			"approval %s needs %d approvers, who approve it as a whole: decide it with \"all\": \"allow\" or \"deny\", not per call", rec.ApprovalID, need.Quorum)}
	}
	for _, prev := range rec.Votes {
		if prev.Approver == name {
			return v, &schemas.Error{Code: CodeDuplicateVote, Message: fmt.Sprintf("approver %s already voted on approval %s at %s", name, rec.ApprovalID, prev.At.Format(time.RFC3339))}
		}
	}
	return v, nil
}

// isAllow: a decision that runs any call is an allow, held to the
// allowers, the quorum and the requester rule; only one that runs nothing
// (every call rejected or answered by the human) is a deny, which any
// approver of the rules may give and which denies at once.
func isAllow(d schemas.Decision) bool {
	if d.All != "" {
		return d.All == schemas.DecideAllow
	}
	for _, td := range d.Decisions {
		if td.Action == schemas.ActionAccept {
			return true
		}
	}
	return false
}

func verb(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// audit appends one record to the job's audit chain, stamped with this
// worker's name and the time.
func (w *Worker) audit(ctx context.Context, rec schemas.AuditRecord) error {
	rec.Worker, rec.At = w.opts.Name, time.Now().UTC()
	actx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	if _, err := w.auditLog.Append(actx, rec); err != nil {
		return fmt.Errorf("write the audit record (%s): %w", rec.Kind, err)
	}
	return nil
}

// auditOrLog is audit for records whose loss must not stop the job (an
// expiry, a cancel): a failure is logged.
func (w *Worker) auditOrLog(ctx context.Context, rec schemas.AuditRecord, log *slog.Logger) {
	if err := w.audit(ctx, rec); err != nil {
		log.Error("audit record not written", "kind", rec.Kind, "err", err)
	}
}

// unverified refusals (no approver could be identified: bad or missing
// signatures, unknown keys, malformed decisions) are counted per job and
// code in memory and written as one refusals_counted record when the job's
// approval settles, so a flood of forgeries cannot fill the audit stream.
type refusalCounts struct {
	mu      sync.Mutex
	n       map[string]map[string]int64 // job id -> code -> count
	audited map[string]bool             // job, approval, approver, code already audited one by one
}

// first reports whether this is the first refusal of approver's decisions
// on the approval with code (then it is audited on its own). The set is
// bounded: past maxCountedJobs entries it starts again.
func (r *refusalCounts) first(jobID, approvalID, approver, code string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.audited == nil || len(r.audited) >= maxCountedJobs {
		r.audited = map[string]bool{}
	}
	k := jobID + "\x00" + approvalID + "\x00" + approver + "\x00" + code
	if r.audited[k] {
		return false
	}
	r.audited[k] = true
	return true
}

// maxCountedJobs bounds the jobs refusals are counted for at once; past it
// they are counted under the overflow job "" (logged, not audited).
const maxCountedJobs = 4096

func (r *refusalCounts) add(jobID, code string) { r.addN(jobID, code, 1) }

func (r *refusalCounts) addN(jobID, code string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]map[string]int64{}
	}
	if _, ok := r.n[jobID]; !ok && len(r.n) >= maxCountedJobs {
		jobID = ""
	}
	if r.n[jobID] == nil {
		r.n[jobID] = map[string]int64{}
	}
	r.n[jobID][code] += n
}

func (r *refusalCounts) take(jobID string) map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.n[jobID]
	delete(r.n, jobID)
	return c
}

// flushRefusals writes the job's counted refusals, one record per code. A
// count that cannot be written is kept for the next flush.
func (w *Worker) flushRefusals(ctx context.Context, jobID, approvalID string, log *slog.Logger) (failed bool) {
	counts := w.refusals.take(jobID)
	for _, code := range slices.Sorted(maps.Keys(counts)) {
		err := w.audit(ctx, schemas.AuditRecord{JobID: jobID, Kind: schemas.AuditRefusalsCounted, ApprovalID: approvalID,
			Code: code, Count: counts[code], Reason: "decisions refused before any approver could be identified"})
		if err != nil {
			log.Warn("counted refusals not audited yet; kept for the next try", "code", code, "count", counts[code], "err", err)
			w.refusals.addN(jobID, code, counts[code])
			failed = true
		}
	}
	return failed
}

// unverifiedCodes are the refusals that name no approver.
var unverifiedCodes = []string{CodeInvalidDecision, CodeSubjectMismatch, CodeUnknownJob, CodeApprovalSettled, CodeApprovalMismatch,
	CodeApprovalExpired, CodeDigestMismatch, CodeSignatureMissing, CodeSignatureMalformed, CodeSignatureInvalid, CodeUnknownKey}

// noteRefusal audits a refused decision: one record for an identified
// approver's, a count for the rest.
func (w *Worker) noteRefusal(ctx context.Context, p *phase, e *schemas.Error, v *vote) {
	jobID := p.job.ID
	if jobID == "" || queue.ValidateJobID(jobID) != nil {
		return
	}
	if v == nil || slices.Contains(unverifiedCodes, e.Code) || !w.refusals.first(jobID, p.run.Record.ApprovalID, v.approver, e.Code) {
		// Unverified, or an identified approver's refusal already audited
		// for this approval (a replayed decision): counted, so replays
		// cannot fill the audit stream.
		w.refusals.add(jobID, e.Code)
		return
	}
	rec := p.run.Record
	w.auditOrLog(ctx, schemas.AuditRecord{JobID: jobID, Kind: schemas.AuditDecisionRefused, ApprovalID: rec.ApprovalID,
		Approver: schemas.AuditApprover{Name: v.approver, Key: v.key}, Rule: needRules(rec.Need), PolicyVersion: w.Policy().Version,
		PendingDigest: rec.PendingDigest, Decision: verb(v.allow), Code: e.Code, Reason: e.Message}, p.log)
}

func needRules(n *schemas.ApprovalNeeds) string {
	if n == nil {
		return ""
	}
	return strings.Join(n.Rules, ",")
}

// decisionWord names a decision for the audit and the result.
func decisionWord(d schemas.Decision) string {
	switch {
	case d.All != "":
		return d.All
	case isAllow(d):
		return "allow"
	}
	for _, td := range d.Decisions {
		if td.Action == schemas.ActionAccept {
			return "mixed"
		}
	}
	return "deny"
}

// settledApproval is what a job's final result lists for one approval.
func settledApproval(rec *queue.RunRecord, decision string, approvers []schemas.ApproverRef) schemas.ApprovalOutcome {
	var rules []string
	if rec.Need != nil {
		rules = rec.Need.Rules
	}
	return schemas.ApprovalOutcome{ApprovalID: rec.ApprovalID, Decision: decision, Approvers: approvers, Rules: rules, DecidedAt: time.Now().UTC()}
}

// voters are the approvers of the votes recorded so far, and v's.
func voters(rec *queue.RunRecord, v *vote) []schemas.ApproverRef {
	var out []schemas.ApproverRef
	for _, x := range rec.Votes {
		out = append(out, schemas.ApproverRef{Name: x.Approver, Key: x.Key})
	}
	if v != nil {
		out = append(out, schemas.ApproverRef{Name: v.approver, Key: v.key})
	}
	return out
}

// requesterOf verifies a signed job: its signature over the job as
// received, by a producer the policy lists under the name requested_by
// gives. An unsigned job has no verified requester (""). A bad signature,
// an unknown key or a name that is not the key's is a field problem.
func requesterOf(pol *policy.Policy, job schemas.Job, raw []byte) (name, key string, err error) {
	if job.Signature == nil {
		return "", "", nil
	}
	bad := func(field, format string, args ...any) (string, string, error) {
		return "", "", &schemas.ValidationError{Code: policy.CodeViolation, Problems: []schemas.FieldError{{Field: field, Reason: fmt.Sprintf(format, args...)}}}
	}
	key, verr := signing.Verify(raw)
	if verr != nil {
		return bad("signature", "%v", verr)
	}
	name, ok := pol.ProducerByKey(key)
	switch {
	case !ok:
		return bad("signature", "key %s is not a producer's in policy version %d (producers:)", key, pol.Version)
	case job.RequestedBy != "" && job.RequestedBy != name:
		return bad("requested_by", "%q, but the job is signed by producer %q", job.RequestedBy, name)
	}
	return name, key, nil
}

// joinViolations puts the field problems of two checks in one error.
func joinViolations(a, b error) error {
	var va, vb *schemas.ValidationError
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case errors.As(a, &va) && errors.As(b, &vb):
		return &schemas.ValidationError{Code: va.Code, Problems: append(slices.Clone(va.Problems), vb.Problems...)}
	}
	return errors.Join(a, b)
}

// auditCancel records a cancel of a running job this worker follows.
func (w *Worker) auditCancel(ctx context.Context, jobID string) {
	w.auditOrLog(ctx, schemas.AuditRecord{JobID: jobID, Kind: schemas.AuditCancel, Decision: "cancelled",
		Reason: "cancel requested while the run was going"}, w.log.With("job_id", jobID))
}

// auditReady refuses (audit_unavailable) a decision the audit stream could
// not record: approvals fail closed when it is full or unreachable.
func (w *Worker) auditReady(ctx context.Context, p *phase) *outcome {
	actx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	if err := w.auditLog.Ready(actx); err != nil {
		o := refuse(&schemas.Error{Code: CodeAuditUnavailable, Message: err.Error()})
		p.voter = nil
		return &o
	}
	return nil
}

// auditRefusalsEvery is how often a worker writes the unverified refusals
// it counted for jobs whose approval another worker settled, or that are
// still pending.
const auditRefusalsEvery = 5 * time.Second

// flushAllRefusals writes every job's counted refusals; it reports whether
// some could not be written (they are kept).
func (w *Worker) flushAllRefusals(ctx context.Context) (failed bool) {
	w.refusals.mu.Lock()
	jobs := slices.Collect(maps.Keys(w.refusals.n))
	w.refusals.mu.Unlock()
	for _, job := range jobs {
		if job == "" {
			if c := w.refusals.take(""); len(c) > 0 {
				w.log.Warn("refused decisions for more jobs than are counted one by one; not audited", "counts", c)
			}
			continue
		}
		failed = w.flushRefusals(ctx, job, "", w.log.With("job_id", job)) || failed
	}
	return failed
}

// auditRefusals writes the counted refusals every auditRefusalsEvery until
// ctx is done (Run writes the rest once every message is settled).
func (w *Worker) auditRefusals(ctx context.Context) {
	t := time.NewTicker(auditRefusalsEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.flushAllRefusals(ctx)
		}
	}
}
