package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// maxPerJob bounds the results and approval requests one job page reads.
const maxPerJob = 100

type jobsView struct {
	Filter   Filter
	States   []State
	Profiles []string
	Page     Page
}

func (s *Server) jobsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := Filter{State: State(q.Get("state")), Profile: q.Get("profile"), Text: strings.TrimSpace(q.Get("q"))}
	if f.State != "" && !slices.Contains(States, f.State) {
		s.fail(w, http.StatusBadRequest, fmt.Sprintf("state must be one of %v", States))
		return
	}
	if f.Profile != "" {
		if err := queue.ValidateProfile(f.Profile); err != nil {
			s.fail(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	page, err := s.jobs.List(r.Context(), f)
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "list jobs: "+err.Error())
		return
	}
	v := jobsView{Filter: f, States: States, Page: page}
	for p := range page.Depth {
		v.Profiles = append(v.Profiles, p)
	}
	slices.Sort(v.Profiles)
	s.render(w, r, "jobs", v)
}

type jobView struct {
	ID        string
	Summary   JobSummary
	Known     bool
	Record    *queue.RunRecord
	Results   []schemas.Result
	Final     *schemas.Result
	Approvals []schemas.ApprovalRequest
	Audit     []schemas.AuditRecord
	AuditErr  string
	// Warnings are what could not be read.
	Warnings []string
}

func (s *Server) jobPage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := queue.ValidateJobID(id); err != nil {
		s.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	v := jobView{ID: id}
	var err error
	if v.Summary, v.Known, err = s.jobs.Job(ctx, id); err != nil {
		v.Warnings = append(v.Warnings, "job index: "+err.Error())
	}
	if rs, err := queue.NewRunStore(ctx, s.js, s.qcfg); err != nil {
		v.Warnings = append(v.Warnings, err.Error())
	} else if rec, _, err := rs.Get(ctx, id); err == nil {
		v.Record, v.Known = &rec, true
	} else if !errors.Is(err, queue.ErrRunNotFound) {
		v.Warnings = append(v.Warnings, err.Error())
	}
	if err := readSubject(ctx, s.js, s.qcfg.ResultsStream(), s.qcfg.ResultSubject(id), maxPerJob, func(res schemas.Result) {
		v.Results = append(v.Results, res)
	}); err != nil {
		v.Warnings = append(v.Warnings, err.Error())
	}
	for i := len(v.Results) - 1; i >= 0; i-- {
		if v.Results[i].Status.Final() {
			v.Final = &v.Results[i]
			break
		}
	}
	if err := readSubject(ctx, s.js, s.qcfg.ApprovalsStream(), s.qcfg.ApprovalSubject(id), maxPerJob, func(a schemas.ApprovalRequest) {
		v.Approvals = append(v.Approvals, a)
	}); err != nil {
		v.Warnings = append(v.Warnings, err.Error())
	}
	entries, err := s.audit.Entries(ctx, id)
	switch {
	case errors.Is(err, queue.ErrAuditNotFound):
	case err != nil:
		v.Warnings = append(v.Warnings, err.Error())
	default:
		records, raws := queue.SplitEntries(entries)
		v.Audit = records
		if err := queue.VerifyAudit(id, records, raws).Err(); err != nil {
			v.AuditErr = err.Error()
		}
	}
	if len(v.Results) > 0 || len(v.Approvals) > 0 {
		v.Known = true
	}
	s.render(w, r, "job", v)
}

// readSubject hands the messages stored on subject (oldest first, at most
// max) to fn, one bounded get each: for a job's few results and requests.
func readSubject[T any](ctx context.Context, js jetstream.JetStream, stream, subject string, max int, fn func(T)) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("read %s: stream %s: %w", subject, stream, err)
	}
	for seq, n := uint64(1), 0; n < max; n++ {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s after stream sequence %d: %w", subject, seq-1, err)
		}
		seq = m.Sequence + 1
		var v T
		if err := json.Unmarshal(m.Data, &v); err != nil {
			return fmt.Errorf("read %s: message %d does not decode: %w", subject, m.Sequence, err)
		}
		fn(v)
	}
	return nil
}

// callView is one pending call as the inbox shows it.
type callView struct {
	ID, Name, Rule, Args string
	Truncated            bool
}

// approvalView is one paused job in the inbox.
type approvalView struct {
	Job         JobSummary
	Calls       []callView
	PendingJSON string
	Signed      bool
	Approved    []string
	Need        schemas.ApprovalNeeds
	Remaining   int
	MayAllow    bool
	MayDeny     bool
	AnyAllowed  bool
	CanDecide   bool
	NoSignIssue string
}

type approvalsView struct {
	Approvals []approvalView
	// Signed: the policy in force wants signed decisions.
	Signed bool
	// MyKey is the signed-in approver's key in the policy ("" unknown).
	MyKey    string
	Approver string
	PolicyV  uint64
	PolicyOK bool
}

func (s *Server) approvalsPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	u := userOf(r)
	paused, err := s.jobs.Paused(ctx)
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "list paused jobs: "+err.Error())
		return
	}
	pol, _ := s.policy(ctx)
	v := approvalsView{Approver: u.Approver}
	if pol != nil {
		v.Signed, v.PolicyV, v.PolicyOK = pol.Signed(), pol.Version, true
		if u.Approver != "" {
			v.MyKey, _ = pol.ApproverKey(u.Approver)
		}
	}
	for _, j := range paused {
		a := approvalView{Job: j, Signed: v.Signed || (j.Need != nil && j.Need.Signed), CanDecide: u.CanDecide()}
		pending := j.Pending
		if pending == nil {
			pending = []schemas.ToolCall{}
		}
		b, _ := schemas.Encode(pending)
		a.PendingJSON = string(b)
		for _, c := range j.Pending {
			a.Calls = append(a.Calls, callView{ID: c.ID, Name: c.Name, Rule: c.Rule, Args: prettyJSON(c.Arguments), Truncated: c.ArgumentsTruncated})
		}
		if j.Need != nil {
			a.Need = *j.Need
		} else {
			a.Need = schemas.ApprovalNeeds{Quorum: 1, RequesterMayApprove: true}
		}
		for _, vote := range j.Votes {
			a.Approved = append(a.Approved, vote.Approver)
		}
		a.Remaining = max(a.Need.Quorum-len(a.Approved), 0)
		me := u.Approver
		a.AnyAllowed = len(a.Need.AllowBy) == 0
		a.MayAllow = a.AnyAllowed || me == "" || slices.Contains(a.Need.AllowBy, me)
		a.MayDeny = len(a.Need.DenyBy) == 0 || me == "" || slices.Contains(a.Need.DenyBy, me)
		if a.Signed && me != "" && v.MyKey == "" {
			a.NoSignIssue = fmt.Sprintf("approver %s has no key in the policy in force", me)
		}
		v.Approvals = append(v.Approvals, a)
	}
	s.render(w, r, "approvals", v)
}

// policy is the stored policy, nil when none is stored.
func (s *Server) policy(ctx context.Context) (*policy.Policy, error) {
	p, err := s.policies.Get(ctx)
	if errors.Is(err, queue.ErrNoPolicy) {
		return nil, nil
	}
	return p, err
}

type deadRow struct {
	Seq    uint64
	Letter schemas.DeadLetter
	// Requeue says why it cannot be requeued ("" when it can).
	NoRequeue string
}

type deadView struct {
	Rows  []deadRow
	Total uint64
}

func (s *Server) deadPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, err := s.js.Stream(ctx, s.qcfg.DeadStream())
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "dead letters: "+err.Error())
		return
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "dead letters: "+err.Error())
		return
	}
	v := deadView{Total: info.State.Msgs}
	if info.State.Msgs > 0 {
		first := info.State.FirstSeq
		if n := uint64(s.cfg.MaxDeadShown); info.State.LastSeq >= n && info.State.LastSeq-n+1 > first {
			first = info.State.LastSeq - n + 1
		}
		for seq, n := first, 0; n < s.cfg.MaxDeadShown; n++ {
			m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(s.qcfg.DeadWildcard()))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				s.fail(w, http.StatusServiceUnavailable, "dead letters: "+err.Error())
				return
			}
			seq = m.Sequence + 1
			row := deadRow{Seq: m.Sequence}
			if err := json.Unmarshal(m.Data, &row.Letter); err != nil {
				row.Letter.Error = "(this dead letter does not decode: " + err.Error() + ")"
			}
			row.NoRequeue = queue.Requeueable(row.Letter)
			v.Rows = append(v.Rows, row)
		}
		slices.Reverse(v.Rows)
	}
	s.render(w, r, "dead", v)
}

type consumerRow struct {
	Name                                   string
	Pending, AckPending, Waiting, Redelive uint64
}

type workersView struct {
	Workers   []WorkerSummary
	Consumers []consumerRow
	Warning   string
}

func (s *Server) workersPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ws, err := s.jobs.Workers(ctx)
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "workers: "+err.Error())
		return
	}
	v := workersView{Workers: ws}
	if st, err := s.js.Stream(ctx, s.qcfg.JobsStream()); err != nil {
		v.Warning = err.Error()
	} else {
		lister := st.ListConsumers(ctx)
		for ci := range lister.Info() {
			v.Consumers = append(v.Consumers, consumerRow{Name: ci.Name, Pending: ci.NumPending, AckPending: uint64(ci.NumAckPending),
				Waiting: uint64(ci.NumWaiting), Redelive: uint64(ci.NumRedelivered)})
		}
		if err := lister.Err(); err != nil {
			v.Warning = "consumers: " + err.Error()
		}
	}
	s.render(w, r, "workers", v)
}

type policyView struct {
	Stored  *queue.StoredPolicy
	Doc     *policy.Document
	Signed  bool
	Error   string
	Version uint64
}

func (s *Server) policyPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var v policyView
	st, err := s.policies.Stored(ctx)
	switch {
	case errors.Is(err, queue.ErrNoPolicy):
	case err != nil:
		v.Error = err.Error()
	default:
		v.Stored = &st
		if p, err := s.policies.Get(ctx); err != nil {
			v.Error = err.Error()
		} else {
			d := p.Document()
			v.Doc, v.Signed, v.Version = &d, p.Signed(), p.Version
		}
	}
	s.render(w, r, "policy", v)
}
