package worker_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// A three-message conversation keeps its context: one session received
// all three prompts, in order, and each result names the session and key.
func TestConversationKeepsItsSession(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	prompts := []string{"#sim text one", "#sim text two", "#sim text three"}
	for i, p := range prompts {
		j := job(fmt.Sprintf("conv-%d", i), p)
		j.SessionKey = "slack-C1-1700000000_0001"
		h.submit(j)
	}
	var session string
	for i := range prompts {
		res := h.final(fmt.Sprintf("conv-%d", i))
		require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
		assert.Equal(t, "slack-C1-1700000000_0001", res.SessionKey)
		assert.Equal(t, []string{"one", "two", "three"}[i], res.Stdout, "each result has its own run's text")
		if i == 0 {
			session = res.SessionID
		}
		assert.Equal(t, session, res.SessionID, "job %d continued the conversation's session", i)
	}
	eventually(t, func() bool { return h.sim.RunState(session) == "idle" }, "the last run ends")
	assert.Equal(t, prompts, h.sim.UserMessages(session), "the session received all three messages")
	assert.Equal(t, 1, h.sim.SessionCount())
}

// Two workers and ten jobs of one conversation: the runs never overlap
// (the server never answered a send with 409) and keep JOBS order.
func TestSessionKeyOrderAcrossWorkers(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Concurrency: 4})
	h.startWorker(worker.Options{Concurrency: 4})
	const n = 10
	for i := range n {
		j := job(fmt.Sprintf("ord-%02d", i), fmt.Sprintf("#sim sleep 50ms\n#sim text answer %02d", i))
		j.SessionKey = "thread-order"
		h.submit(j)
	}
	var results []schemas.Result
	for i := range n {
		res := h.final(fmt.Sprintf("ord-%02d", i))
		require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
		assert.Equal(t, 1, res.Attempt, "waiting for its turn used up no delivery")
		results = append(results, res)
	}
	for _, r := range results[1:] {
		assert.Equal(t, results[0].SessionID, r.SessionID)
	}
	// The order the session's runs were sent in, and no send refused.
	var sent []string
	for _, r := range h.sim.Requests() {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.Path, "/messages") {
			continue
		}
		assert.NotEqual(t, http.StatusConflict, r.Status, "a send overlapped another run of the session")
		var body struct {
			Message struct{ Content string } `json:"message"`
		}
		require.NoError(t, json.Unmarshal(r.Body, &body))
		if r.Status == http.StatusOK {
			sent = append(sent, body.Message.Content)
		}
	}
	require.Len(t, sent, n)
	assert.True(t, sort.StringsAreSorted(sent), "runs in JOBS order: %q", sent)
	// Intervals: each job started after the one before it finished.
	for i := 1; i < n; i++ {
		assert.False(t, results[i].StartedAt.Before(results[i-1].FinishedAt), "job %d started before job %d finished", i, i-1)
	}
}

// A concurrency key allows the policy's limit of runs at once; the rest
// wait, in order, and count in the waiting gauge under the listed key.
func TestConcurrencyKeyLimitsRuns(t *testing.T) {
	h := newHarness(t, queue.Config{})
	store, err := queue.NewPolicyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	_, err = store.Set(t.Context(), []byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"},"concurrency":{"default":3,"keys":{"env:prod":1}}}`))
	require.NoError(t, err)
	m := worker.NewMetrics()
	// One set of metrics for both workers: whichever holds the waiting job.
	h.startWorker(worker.Options{Policies: worker.StoredPolicies(store), Concurrency: 4, Metrics: m})
	h.startWorker(worker.Options{Policies: worker.StoredPolicies(store), Concurrency: 4, Metrics: m})
	const n = 4
	for i := range n {
		j := job(fmt.Sprintf("deploy-%d", i), "#sim sleep 200ms\n#sim text deployed")
		j.ConcurrencyKey = "env:prod"
		h.submit(j)
	}
	eventually(t, func() bool {
		return testutil.ToFloat64(m.KeyWaiting.WithLabelValues("concurrency_key", "env:prod")) > 0
	}, "a deploy waits for env:prod, labelled by the listed key")
	var results []schemas.Result
	for i := range n {
		res := h.final(fmt.Sprintf("deploy-%d", i))
		require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
		results = append(results, res)
	}
	for i := 1; i < n; i++ {
		assert.False(t, results[i].StartedAt.Before(results[i-1].FinishedAt), "deploy %d overlapped deploy %d", i, i-1)
	}
	eventually(t, func() bool {
		return testutil.ToFloat64(m.KeyWaiting.WithLabelValues("concurrency_key", "env:prod")) == 0
	}, "nobody waits any more")
	// Every slot is given back (once each message is settled, after its result).
	keys, err := queue.NewKeyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	eventuallyWithT(t, func(c *assert.CollectT) {
		lease, _, err := keys.Concurrency(t.Context(), "env:prod")
		assert.NoError(c, err)
		assert.Empty(c, lease.Holders)
	}, "every slot given back")
}

// A session_key belongs to the profile of its first job: a job of another
// profile with the same key is rejected, naming the field.
func TestSessionKeyOfAnotherProfileIsRejected(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Profiles: []string{"default", "ops"}})
	first := job("prof-1", "#sim text hi")
	first.SessionKey = "shared-thread"
	h.submit(first)
	require.Equal(t, schemas.StatusCompleted, h.final("prof-1").Status)
	other := job("prof-2", "#sim text hi")
	other.SessionKey, other.Profile = "shared-thread", "ops"
	h.submit(other)
	res := h.final("prof-2")
	require.Equal(t, schemas.StatusRejected, res.Status)
	require.NotNil(t, res.Error)
	require.NotEmpty(t, res.Error.Fields)
	assert.Equal(t, "session_key", res.Error.Fields[0].Field)
	assert.Contains(t, res.Error.Fields[0].Reason, `profile "default"`)
}

// A worker that dies holding a concurrency slot leaks nothing: the next
// job finds the holder's run done and takes the slot.
func TestDeadHolderLeaksNoSlot(t *testing.T) {
	h := newHarness(t, queue.Config{})
	keys, err := queue.NewKeyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	// A lease left by a job whose message is gone and that has no run: a
	// worker that took the slot and died before its record.
	_, err = keys.PutConcurrency(t.Context(), "env:prod", queue.ConcurrencyLease{Holders: []queue.KeyHolder{{Job: "ghost", Seq: 999999, Since: time.Now()}}}, 0)
	require.NoError(t, err)
	store, err := queue.NewPolicyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	_, err = store.Set(t.Context(), []byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"},"concurrency":{"keys":{"env:prod":1}}}`))
	require.NoError(t, err)
	h.startWorker(worker.Options{Policies: worker.StoredPolicies(store)})
	j := job("after-ghost", "#sim text ok")
	j.ConcurrencyKey = "env:prod"
	h.submit(j)
	require.Equal(t, schemas.StatusCompleted, h.final("after-ghost").Status)
}

// Steering lands in the running agent, shows in the live events, is
// audited, and a finished or unknown job gets a clear error.
func TestSteerARunningJob(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	h.startWorker(worker.Options{})
	h.submit(job("steer-1", "#sim text starting\n#sim sleep 2s\n#sim tool-time 500ms\n#sim tool view {\"path\":\"/\"}\n#sim sleep 500ms\n#sim text done"))
	eventuallyWithT(t, func(c *assert.CollectT) {
		evs, err := h.tryEvents("steer-1")
		assert.NoError(c, err)
		assert.True(c, slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventText }))
	}, "the run is going")
	r := h.steerJob("steer-1", "also check staging")
	require.Nil(t, r.Error, "%+v", r.Error)
	assert.Equal(t, schemas.Steered, r.Outcome)
	res := h.final("steer-1")
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	eventually(t, func() bool { return h.sim.RunState(res.SessionID) == "idle" }, "the run ends")
	assert.Contains(t, h.sim.UserMessages(res.SessionID), "also check staging", "the agent read the guidance")
	evs := h.events("steer-1")
	assert.True(t, slices.ContainsFunc(evs, func(e schemas.Event) bool {
		return e.Type == schemas.EventSteered && e.Text == "also check staging"
	}), "a steered event")
	audit, err := queue.NewAuditLog(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	chain, err := audit.Chain(t.Context(), "steer-1")
	require.NoError(t, err)
	assert.True(t, slices.ContainsFunc(chain, func(a schemas.AuditRecord) bool { return a.Kind == schemas.AuditSteer }), "audited")

	r = h.steerJob("steer-1", "too late")
	require.NotNil(t, r.Error)
	assert.Equal(t, "job_finished", r.Error.Code)
	r = h.steerJob("never-seen", "hello")
	require.NotNil(t, r.Error)
	assert.Equal(t, "unknown_job", r.Error.Code)
	// A body naming another job than its subject is refused.
	data, err := json.Marshal(schemas.SteerRequest{JobID: "other", Text: "x"})
	require.NoError(t, err)
	msg, err := h.js.Conn().Request(h.qcfg.SteerSubject("steer-1"), data, waitFor)
	require.NoError(t, err)
	var mismatch schemas.CancelReply
	require.NoError(t, json.Unmarshal(msg.Data, &mismatch))
	require.NotNil(t, mismatch.Error)
	assert.Equal(t, worker.CodeSubjectMismatch, mismatch.Error.Code)
}

// Where the policy wants signed decisions, steering must be signed by an
// approver, recently.
func TestSignedSteering(t *testing.T) {
	h := newHarness(t, queue.Config{})
	seed, pub, err := signing.NewSeed()
	require.NoError(t, err)
	store, err := queue.NewPolicyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	_, err = store.Set(t.Context(), []byte(fmt.Sprintf(`{"version":1,"decisions":"signed","tools":{"default":"allow"},"approvers":{"alice":{"key":%q}}}`, pub)))
	require.NoError(t, err)
	h.startWorker(worker.Options{Policies: worker.StoredPolicies(store)})
	h.submit(job("steer-signed", "#sim text starting\n#sim sleep 1s\n#sim tool-time 500ms\n#sim tool view {\"path\":\"/\"}\n#sim sleep 1s\n#sim tool view {\"path\":\"/b\"}\n#sim text done"))
	eventuallyWithT(t, func(c *assert.CollectT) {
		evs, err := h.tryEvents("steer-signed")
		assert.NoError(c, err)
		assert.True(c, slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventText }))
	}, "the run is going")
	r := h.steerJob("steer-signed", "unsigned")
	require.NotNil(t, r.Error)
	assert.Equal(t, worker.CodeSignatureMissing, r.Error.Code)

	old := time.Now().Add(-time.Hour).UTC()
	stale := schemas.SteerRequest{Schema: schemas.SteerSchemaID, JobID: "steer-signed", Text: "old", SentAt: &old}
	require.NoError(t, signing.SignSteer(&stale, seed))
	assert.Equal(t, worker.CodeStaleRequest, h.steerWith(stale).Error.Code)

	now := time.Now().UTC()
	ok := schemas.SteerRequest{Schema: schemas.SteerSchemaID, JobID: "steer-signed", Text: "signed guidance", SentAt: &now}
	require.NoError(t, signing.SignSteer(&ok, seed))
	rep := h.steerWith(ok)
	require.Nil(t, rep.Error, "%+v", rep.Error)
	assert.Equal(t, schemas.Steered, rep.Outcome)
	require.Equal(t, schemas.StatusCompleted, h.final("steer-signed").Status)
	evs := h.events("steer-signed")
	assert.True(t, slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventSteered && e.Status == "alice" }),
		"the verified approver is named")
}

func (h *harness) steerJob(jobID, text string) schemas.CancelReply {
	h.t.Helper()
	return h.steerWith(schemas.SteerRequest{JobID: jobID, Text: text})
}

func (h *harness) steerWith(req schemas.SteerRequest) schemas.CancelReply {
	h.t.Helper()
	data, err := schemas.Encode(req)
	require.NoError(h.t, err)
	msg, err := h.js.Conn().Request(h.qcfg.SteerSubject(req.JobID), data, waitFor)
	require.NoError(h.t, err)
	var r schemas.CancelReply
	require.NoError(h.t, json.Unmarshal(msg.Data, &r))
	require.NoError(h.t, schemas.Validate(schemas.SchemaCancelReply, msg.Data))
	return r
}

// A conversation begun by a signed job is its producer's: an unsigned job
// (or another producer's) with the same key is rejected.
func TestSessionKeyBelongsToItsRequester(t *testing.T) {
	h := newHarness(t, queue.Config{})
	seed, pub, err := signing.NewSeed()
	require.NoError(t, err)
	store, err := queue.NewPolicyStore(t.Context(), h.js, h.qcfg)
	require.NoError(t, err)
	_, err = store.Set(t.Context(), []byte(fmt.Sprintf(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"},"producers":{"chatbot":{"key":%q}}}`, pub)))
	require.NoError(t, err)
	h.startWorker(worker.Options{Policies: worker.StoredPolicies(store)})
	signed := job("req-1", "#sim text hi")
	signed.SessionKey, signed.RequestedBy = "thread-owned", "chatbot"
	require.NoError(t, signing.SignJob(&signed, seed))
	h.submit(signed)
	require.Equal(t, schemas.StatusCompleted, h.final("req-1").Status)
	intruder := job("req-2", "#sim text what did they say?")
	intruder.SessionKey = "thread-owned"
	h.submit(intruder)
	res := h.final("req-2")
	require.Equal(t, schemas.StatusRejected, res.Status)
	require.NotEmpty(t, res.Error.Fields)
	assert.Equal(t, "session_key", res.Error.Fields[0].Field)
	next := job("req-3", "#sim text and again")
	next.SessionKey, next.RequestedBy = "thread-owned", "chatbot"
	require.NoError(t, signing.SignJob(&next, seed))
	h.submit(next)
	assert.Equal(t, schemas.StatusCompleted, h.final("req-3").Status, "the producer's own next job continues it")
}

// What a careless or hostile publisher sends on a steer subject gets a
// clear error, never silence: garbage, an empty or oversized text, an
// invalid job id in the subject.
func TestSteerBadInput(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	eventually(t, func() bool {
		_, err := h.js.Conn().Request(h.qcfg.SteerSubject("j1"), []byte(`{}`), time.Second)
		return err == nil
	}, "the worker answers steering requests")
	ask := func(subject string, body []byte) schemas.CancelReply {
		t.Helper()
		msg, err := h.js.Conn().Request(subject, body, waitFor)
		require.NoError(t, err)
		var r schemas.CancelReply
		require.NoError(t, json.Unmarshal(msg.Data, &r), "%s", msg.Data)
		require.NoError(t, schemas.Validate(schemas.SchemaCancelReply, msg.Data))
		return r
	}
	for name, body := range map[string][]byte{
		"garbage":      []byte("\x00not json{"),
		"empty text":   []byte(`{"job_id":"j1","text":""}`),
		"huge text":    []byte(`{"job_id":"j1","text":"` + strings.Repeat("x", schemas.MaxSteerText+1) + `"}`),
		"unknown key":  []byte(`{"job_id":"j1","text":"x","extra":1}`),
		"no job_id":    []byte(`{"text":"x"}`),
		"wrong schema": []byte(`{"schema":"jetpilot.decision.v1","job_id":"j1","text":"x"}`),
	} {
		r := ask(h.qcfg.SteerSubject("j1"), body)
		require.NotNil(t, r.Error, name)
		assert.Equal(t, "invalid_request", r.Error.Code, "%s: %s", name, r.Error.Message)
	}
	r := ask(h.qcfg.SteerSubject("bad!id"), []byte(`{"job_id":"bad!id","text":"x"}`))
	require.NotNil(t, r.Error)
	assert.Equal(t, "invalid_job_id", r.Error.Code)
}
