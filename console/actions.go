package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
)

// decideReply is the answer to a decision POST.
type decideReply struct {
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

func (s *Server) decideFail(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(decideReply{Message: fmt.Sprintf(format, args...)})
}

// decide publishes a decision the browser built (and, under signed
// decisions, signed). The body is the decision document. It must be about
// the approval now pending on its job; a signed one must verify
// (signing.Verify) with a key the policy gives the signed-in approver; an
// unsigned one is published under the signed-in name. The worker still
// checks everything again: this only refuses early and clearly.
func (s *Server) decide(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	u := userOf(r)
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		s.decideFail(w, http.StatusBadRequest, "read the decision: %v", err)
		return
	}
	d, err := schemas.DecodeDecision(raw)
	if err != nil {
		s.decideFail(w, http.StatusBadRequest, "%v", err)
		return
	}
	sum, ok, err := s.jobs.Job(ctx, d.JobID)
	switch {
	case err != nil:
		s.decideFail(w, http.StatusServiceUnavailable, "look the job up: %v", err)
		return
	case !ok || sum.State != StatePaused || sum.ApprovalID != d.ApprovalID:
		s.decideFail(w, http.StatusConflict, "approval %s is not pending on job %s (decided, expired or unknown): reload the inbox", d.ApprovalID, d.JobID)
		return
	}
	pol, err := s.policy(ctx)
	if err != nil {
		s.decideFail(w, http.StatusServiceUnavailable, "read the policy: %v", err)
		return
	}
	signed := (pol != nil && pol.Signed()) || (sum.Need != nil && sum.Need.Signed)
	switch {
	case d.Signature != nil:
		key, err := signing.Verify(raw)
		if err != nil {
			s.decideFail(w, http.StatusBadRequest, "the signature does not verify: %v", err)
			return
		}
		if pol != nil {
			name, ok := pol.ApproverByKey(key)
			if !ok {
				s.decideFail(w, http.StatusForbidden, "key %s is not an approver's in policy version %d", key, pol.Version)
				return
			}
			if u.Approver != "" && name != u.Approver {
				s.decideFail(w, http.StatusForbidden, "key %s is approver %s's; you are signed in as approver %s", key, name, u.Approver)
				return
			}
		}
		if d.PendingDigest != sum.PendingDigest {
			s.decideFail(w, http.StatusConflict, "the decision was made for other calls (pending_digest differs): reload the inbox")
			return
		}
		// Published as decoded; make sure that encoding still verifies.
		enc, err := schemas.Encode(d)
		if err != nil {
			s.decideFail(w, http.StatusBadRequest, "encode the decision: %v", err)
			return
		}
		if _, err := signing.Verify(enc); err != nil {
			s.decideFail(w, http.StatusBadRequest, "the decision does not survive re-encoding: %v", err)
			return
		}
	case signed:
		s.decideFail(w, http.StatusBadRequest, "the policy requires signed decisions: load your key into the page")
		return
	default:
		d.DecidedBy = u.Approver
		if d.DecidedBy == "" {
			d.DecidedBy = u.Name
		}
		d.DecidedAt = time.Now().UTC().Truncate(time.Second)
		if d.PendingDigest == "" {
			d.PendingDigest = sum.PendingDigest
		}
	}
	if err := s.client.Decide(ctx, d); err != nil {
		s.decideFail(w, http.StatusBadGateway, "publish the decision: %v", err)
		return
	}
	s.log.Info("console: decision published", "user", u.Name, "job_id", d.JobID, "approval_id", d.ApprovalID, "signed", d.Signature != nil)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(decideReply{OK: true, Message: "decision sent; the worker applies it or says why not on the job's events"})
}

// requeue publishes a dead-lettered job again as a new attempt under
// RequeueID. A producer's signature covers the old id, so it and
// requested_by are dropped: the requeued job is the approver's, unsigned.
func (s *Server) requeue(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	seq, err := strconv.ParseUint(r.PostFormValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		s.fail(w, http.StatusBadRequest, "seq must be a dead letter's stream sequence")
		return
	}
	st, err := s.js.Stream(ctx, s.qcfg.DeadStream())
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "dead letters: "+err.Error())
		return
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		s.fail(w, http.StatusNotFound, fmt.Sprintf("no dead letter at sequence %d (expired?)", seq))
		return
	}
	if err != nil {
		s.fail(w, http.StatusServiceUnavailable, "dead letters: "+err.Error())
		return
	}
	var dl schemas.DeadLetter
	if err := json.Unmarshal(m.Data, &dl); err != nil {
		s.fail(w, http.StatusUnprocessableEntity, "the dead letter does not decode: "+err.Error())
		return
	}
	newID := queue.RequeueID(dl.JobID, seq)
	job, data, err := queue.RequeueJob(dl, newID)
	if err != nil {
		s.fail(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	ack, err := s.client.SubmitRaw(ctx, job.Profile, newID, data)
	if err != nil {
		s.fail(w, http.StatusBadGateway, "requeue: "+err.Error())
		return
	}
	s.log.Info("console: dead letter requeued", "user", userOf(r).Name, "job_id", dl.JobID, "new_id", newID, "duplicate", ack.Duplicate)
	http.Redirect(w, r, "/jobs/"+url.PathEscape(newID), http.StatusSeeOther)
}
