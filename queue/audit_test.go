package queue_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

const testKey = "UCZT6PMFVFM4KMZW4RR2ZMPLDTA2R5OQ7TPI4K4AOHTS5LSAQDE7QBJF"

func auditRec(jobID string, kind schemas.AuditKind, reason string) schemas.AuditRecord {
	return schemas.AuditRecord{JobID: jobID, Kind: kind, ApprovalID: jobID + ":1", Reason: reason, Worker: "w1"}
}

func newAuditLog(t *testing.T, e env) *queue.AuditLog {
	t.Helper()
	l, err := queue.NewAuditLog(e.ctx, e.js, e.cfg)
	require.NoError(t, err)
	return l
}

func TestAuditAppendChainVerify(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	l := newAuditLog(t, e)
	const job = "job:1.a"

	req, err := l.Append(e.ctx, schemas.AuditRecord{JobID: job, Kind: schemas.AuditApprovalRequested, ApprovalID: "job:1.a:1",
		Rule: "prod-change", PolicyVersion: 4, PendingDigest: strings.Repeat("ab", 32), Worker: "w1"})
	require.NoError(t, err)
	assert.Equal(t, schemas.AuditSchemaID, req.Schema)
	assert.EqualValues(t, 1, req.Seq)
	assert.Empty(t, req.Prev)
	assert.False(t, req.At.IsZero())
	assert.Equal(t, time.UTC, req.At.Location())

	applied := auditRec(job, schemas.AuditDecisionApplied, "change window is open")
	applied.Approver = schemas.AuditApprover{Name: "alice", Key: testKey}
	applied.Decision = schemas.DecideAllow
	applied, err = l.Append(e.ctx, applied)
	require.NoError(t, err)
	assert.EqualValues(t, 2, applied.Seq)
	expired, err := l.Append(e.ctx, auditRec(job, schemas.AuditApprovalExpired, ""))
	require.NoError(t, err)
	assert.EqualValues(t, 3, expired.Seq)

	entries, err := l.Entries(e.ctx, job)
	require.NoError(t, err)
	require.Len(t, entries, 3)
	// Each prev is the hash of the payload before it, exactly as stored.
	assert.Equal(t, queue.AuditHash(entries[0].Raw), entries[1].Record.Prev)
	assert.Equal(t, queue.AuditHash(entries[1].Raw), entries[2].Record.Prev)
	assert.Equal(t, applied.Prev, entries[1].Record.Prev)

	records, err := l.Chain(e.ctx, job)
	require.NoError(t, err)
	require.Len(t, records, 3)
	assert.Equal(t, "alice", records[1].Approver.Name)
	assert.Equal(t, testKey, records[1].Approver.Key)
	assert.Equal(t, "change window is open", records[1].Reason)
	for i, want := range []schemas.AuditRecord{req, applied, expired} {
		assert.True(t, want.At.Equal(records[i].At))
		records[i].At = want.At
		assert.Equal(t, want, records[i], "Append returns the record as stored")
	}

	rep, err := l.VerifyChain(e.ctx, job)
	require.NoError(t, err)
	assert.True(t, rep.Intact)
	assert.Equal(t, 3, rep.Records)
	assert.Equal(t, queue.AuditHash(entries[2].Raw), rep.Head)
	require.NoError(t, rep.Err())

	// Where they are: the job's subject, with Nats-Msg-Id <job_id>:<seq>.
	s, err := e.js.Stream(e.ctx, "JETPILOT_AUDIT")
	require.NoError(t, err)
	m, err := s.GetMsg(e.ctx, entries[1].StreamSeq)
	require.NoError(t, err)
	assert.Equal(t, "jetpilot.audit.job:1.a", m.Subject)
	assert.Equal(t, "job:1.a:2", m.Header.Get(jetstream.MsgIDHeader))
	assert.Equal(t, "job:1.a:2", queue.AuditMsgID(job, 2))

	// Another job has a chain of its own.
	other, err := l.Append(e.ctx, auditRec("job:2", schemas.AuditCancel, "operator"))
	require.NoError(t, err)
	assert.EqualValues(t, 1, other.Seq)
	assert.Empty(t, other.Prev)

	// The policy chain: job id "", on its own subject.
	p1, err := l.Append(e.ctx, schemas.AuditRecord{Kind: schemas.AuditPolicySet, PolicyVersion: 5, Worker: "jetpilot policy set"})
	require.NoError(t, err)
	p2, err := l.Append(e.ctx, schemas.AuditRecord{Kind: schemas.AuditPolicySet, PolicyVersion: 6, Reason: "freeze"})
	require.NoError(t, err)
	assert.EqualValues(t, 1, p1.Seq)
	assert.EqualValues(t, 2, p2.Seq)
	pe, err := l.Entries(e.ctx, "")
	require.NoError(t, err)
	require.Len(t, pe, 2)
	m, err = s.GetMsg(e.ctx, pe[1].StreamSeq)
	require.NoError(t, err)
	assert.Equal(t, "jetpilot.policy_audit", m.Subject)
	assert.Equal(t, "~policy:2", m.Header.Get(jetstream.MsgIDHeader))
	rep, err = l.VerifyChain(e.ctx, "")
	require.NoError(t, err)
	assert.True(t, rep.Intact)
	assert.Empty(t, rep.JobID)

	// A job's chain never includes the policy records, nor another job's.
	records, err = l.Chain(e.ctx, job)
	require.NoError(t, err)
	assert.Len(t, records, 3)
}

func TestAuditAppendRefusals(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	l := newAuditLog(t, e)

	_, err := l.Append(e.ctx, schemas.AuditRecord{Kind: schemas.AuditCancel})
	require.ErrorContains(t, err, "no job id (only policy_set records go to the policy chain)")
	_, err = l.Append(e.ctx, schemas.AuditRecord{JobID: "j", Kind: schemas.AuditPolicySet})
	require.ErrorContains(t, err, "policy changes go to the policy chain")
	_, err = l.Append(e.ctx, schemas.AuditRecord{JobID: "a b", Kind: schemas.AuditCancel})
	require.ErrorContains(t, err, "whitespace")
	_, err = l.Append(e.ctx, schemas.AuditRecord{JobID: "j", Kind: schemas.AuditRefusalsCounted})
	var verr *schemas.ValidationError
	require.ErrorAs(t, err, &verr, "the schema is checked before publishing")
	assert.Contains(t, err.Error(), "count: is required")
	_, err = l.Append(e.ctx, schemas.AuditRecord{JobID: "j", Kind: "approved"})
	require.ErrorAs(t, err, &verr)

	// Nothing was stored by any of them.
	_, err = l.Chain(e.ctx, "j")
	require.ErrorIs(t, err, queue.ErrAuditNotFound)
	_, err = l.VerifyChain(e.ctx, "nobody")
	require.ErrorIs(t, err, queue.ErrAuditNotFound)
	_, err = l.Chain(e.ctx, "")
	require.ErrorIs(t, err, queue.ErrAuditNotFound)

	// Long words are shortened to fit, not refused: the record matters more.
	long := strings.Repeat("é", schemas.AuditMaxReason+10)
	rec, err := l.Append(e.ctx, schemas.AuditRecord{JobID: "j", Kind: schemas.AuditDecisionRefused, Code: "unknown_key", Reason: long, Decision: long})
	require.NoError(t, err)
	assert.Equal(t, schemas.AuditMaxReason, utf8.RuneCountInString(rec.Reason))
	assert.True(t, strings.HasSuffix(rec.Reason, "…"))
	assert.Equal(t, schemas.AuditMaxDecision, utf8.RuneCountInString(rec.Decision))

	// Without the stream there is no audit log, and it says why.
	_, _, js := testnats.Start(t)
	_, err = queue.NewAuditLog(e.ctx, js, queue.Config{})
	require.ErrorContains(t, err, "stream JETPILOT_AUDIT; has `jetpilot setup` run?")
}

// TestAuditConcurrentAppendersOneChain: appenders on two connections race
// for one job's chain; every record lands once, in one unforked chain.
func TestAuditConcurrentAppendersOneChain(t *testing.T) {
	t.Parallel()
	s, _, js1 := testnats.Start(t)
	_, js2 := testnats.Connect(t, s)
	ctx := testCtx(t)
	require.NoError(t, queue.Setup(ctx, js1, queue.Config{}))
	var logs []*queue.AuditLog
	for _, js := range []jetstream.JetStream{js1, js2} {
		l, err := queue.NewAuditLog(ctx, js, queue.Config{})
		require.NoError(t, err)
		logs = append(logs, l, l) // two appenders per connection
	}
	const job, each = "race-1", 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var seqs []uint64
	errs := make(chan error, len(logs)*each)
	for a, l := range logs {
		wg.Go(func() {
			for i := range each {
				rec, err := l.Append(ctx, auditRec(job, schemas.AuditDecisionRefused, fmt.Sprintf("appender %d record %d", a, i)))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				seqs = append(seqs, rec.Seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	total := len(logs) * each
	slices.Sort(seqs)
	want := make([]uint64, total)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	assert.Equal(t, want, seqs, "every append got its own place")

	records, err := logs[0].Chain(ctx, job)
	require.NoError(t, err)
	require.Len(t, records, total, "nothing lost, nothing twice")
	reasons := map[string]bool{}
	for i, r := range records {
		assert.EqualValues(t, i+1, r.Seq)
		reasons[r.Reason] = true
	}
	assert.Len(t, reasons, total)
	rep, err := logs[3].VerifyChain(ctx, job)
	require.NoError(t, err)
	assert.True(t, rep.Intact, "%+v", rep)
}

// tamperEnv is an AUDIT stream WITHOUT DenyDelete and DenyPurge, which
// the real one cannot lose once it has them, so a test can remove and
// replace records as someone with access to the storage could.
func tamperEnv(t *testing.T) (env, *queue.AuditLog, jetstream.Stream) {
	t.Helper()
	_, nc, js := testnats.Start(t)
	ctx := testCtx(t)
	cfg := queue.Config{Prefix: "tamper"}.WithDefaults()
	var sc jetstream.StreamConfig
	for _, c := range cfg.StreamConfigs() {
		if c.Name == cfg.AuditStream() {
			sc = c
		}
	}
	require.True(t, sc.DenyDelete && sc.DenyPurge)
	sc.DenyDelete, sc.DenyPurge = false, false
	s, err := js.CreateStream(ctx, sc)
	require.NoError(t, err)
	e := env{ctx: ctx, nc: nc, js: js, cfg: cfg}
	return e, newAuditLog(t, e), s
}

func appendN(t *testing.T, e env, l *queue.AuditLog, job string, n int) []queue.AuditEntry {
	t.Helper()
	for i := range n {
		_, err := l.Append(e.ctx, auditRec(job, schemas.AuditDecisionRefused, fmt.Sprintf("refused %d", i+1)))
		require.NoError(t, err)
	}
	entries, err := l.Entries(e.ctx, job)
	require.NoError(t, err)
	require.Len(t, entries, n)
	return entries
}

func TestAuditTamperedChains(t *testing.T) {
	t.Parallel()
	e, l, s := tamperEnv(t)

	// A record removed from the middle.
	entries := appendN(t, e, l, "gap", 4)
	require.NoError(t, s.DeleteMsg(e.ctx, entries[1].StreamSeq))
	rep, err := l.VerifyChain(e.ctx, "gap")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.False(t, rep.Intact)
	assert.Equal(t, queue.AuditMissing, rep.Problem)
	assert.EqualValues(t, 2, rep.BadSeq)
	assert.Equal(t, "record 2 is missing: record 3 follows record 1", rep.Detail)
	assert.Contains(t, err.Error(), "the audit chain of job gap: record 2 is missing")

	// The first record removed.
	entries = appendN(t, e, l, "head", 3)
	require.NoError(t, s.DeleteMsg(e.ctx, entries[0].StreamSeq))
	rep, err = l.VerifyChain(e.ctx, "head")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.Equal(t, queue.AuditMissing, rep.Problem)
	assert.EqualValues(t, 1, rep.BadSeq)
	assert.Equal(t, "record 1 is missing: the chain starts at record 2 (removed, or aged out of the stream)", rep.Detail)
	require.NoError(t, s.DeleteMsg(e.ctx, entries[1].StreamSeq))
	rep, err = l.VerifyChain(e.ctx, "head")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.Equal(t, "records 1 to 2 are missing: the chain starts at record 3 (removed, or aged out of the stream)", rep.Detail)

	// A record rewritten in place: records 3 and 4 removed, then 3 put back
	// with other words and 4 exactly as it was.
	entries = appendN(t, e, l, "edit", 4)
	require.NoError(t, s.DeleteMsg(e.ctx, entries[2].StreamSeq))
	require.NoError(t, s.DeleteMsg(e.ctx, entries[3].StreamSeq))
	forged := bytes.Replace(entries[2].Raw, []byte("refused 3"), []byte("allowed 3"), 1)
	require.NotEqual(t, entries[2].Raw, forged)
	for _, data := range [][]byte{forged, entries[3].Raw} {
		_, err := e.js.Publish(e.ctx, e.cfg.AuditSubject("edit"), data)
		require.NoError(t, err)
	}
	rep, err = l.VerifyChain(e.ctx, "edit")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.Equal(t, queue.AuditAltered, rep.Problem)
	assert.EqualValues(t, 3, rep.BadSeq)
	assert.Contains(t, rep.Detail, "record 3 was altered (its SHA-256 is not the prev of record 4)")

	// Something that is not an audit record at the end of a chain: Verify
	// reports it, and Append refuses to build on it (fail closed).
	appendN(t, e, l, "junk", 2)
	_, err = e.js.Publish(e.ctx, e.cfg.AuditSubject("junk"), []byte("not json"))
	require.NoError(t, err)
	rep, err = l.VerifyChain(e.ctx, "junk")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.Equal(t, queue.AuditAltered, rep.Problem)
	assert.EqualValues(t, 3, rep.BadSeq)
	assert.Contains(t, rep.Detail, "record 3 is not an audit record (it is not JSON")
	_, err = l.Chain(e.ctx, "junk")
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	_, err = l.Append(e.ctx, auditRec("junk", schemas.AuditCancel, ""))
	require.ErrorIs(t, err, queue.ErrAuditChainBroken)
	assert.Contains(t, err.Error(), "the last record of the audit chain of job junk (stream sequence")

	// The untouched chains of the same stream stay intact.
	appendN(t, e, l, "fine", 3)
	rep, err = l.VerifyChain(e.ctx, "fine")
	require.NoError(t, err)
	assert.True(t, rep.Intact)
}

// chainOf builds an intact chain of n records without a server.
func chainOf(t *testing.T, job string, n int) ([]schemas.AuditRecord, [][]byte) {
	t.Helper()
	at := time.Date(2025, 4, 5, 14, 2, 11, 0, time.UTC)
	var records []schemas.AuditRecord
	var raws [][]byte
	prev := ""
	for i := range n {
		r := schemas.AuditRecord{Schema: schemas.AuditSchemaID, JobID: job, Seq: uint64(i + 1), Prev: prev,
			Kind: schemas.AuditDecisionRefused, At: at.Add(time.Duration(i) * time.Minute), Code: "digest_mismatch", Reason: fmt.Sprintf("r%d", i+1)}
		if job == "" {
			r.Kind, r.Code = schemas.AuditPolicySet, ""
		}
		data, err := schemas.Encode(r)
		require.NoError(t, err)
		require.NoError(t, schemas.Validate(schemas.SchemaAudit, data))
		records, raws = append(records, r), append(raws, data)
		prev = queue.AuditHash(data)
	}
	return records, raws
}

func TestVerifyAudit(t *testing.T) {
	t.Parallel()
	records, raws := chainOf(t, "j1", 4)
	rep := queue.VerifyAudit("j1", records, raws)
	require.True(t, rep.Intact, "%+v", rep)
	assert.Equal(t, queue.AuditHash(raws[3]), rep.Head)
	assert.NoError(t, rep.Err())
	precs, praws := chainOf(t, "", 3)
	assert.True(t, queue.VerifyAudit("", precs, praws).Intact, "the policy chain")
	assert.True(t, queue.VerifyAudit("j1", nil, nil).Intact, "nothing to contradict")

	drop := func(i int) ([]schemas.AuditRecord, [][]byte) {
		return slices.Delete(slices.Clone(records), i, i+1), slices.Delete(slices.Clone(raws), i, i+1)
	}
	edit := func(i int, raw []byte) [][]byte {
		out := slices.Clone(raws)
		out[i] = raw
		return out
	}
	reencode := func(r schemas.AuditRecord) []byte {
		data, err := schemas.Encode(r)
		require.NoError(t, err)
		return data
	}
	changed := records[1]
	changed.Reason = "allowed after all"
	otherJob := records[1]
	otherJob.JobID = "j2"

	for _, tc := range []struct {
		name    string
		job     string
		records []schemas.AuditRecord
		raws    [][]byte
		problem queue.AuditProblem
		seq     uint64
		detail  string
	}{
		{"middle dropped", "j1", nil, nil, queue.AuditMissing, 3, "record 3 is missing: record 4 follows record 2"},
		{"first dropped", "j1", nil, nil, queue.AuditMissing, 1, "record 1 is missing: the chain starts at record 2"},
		{"raw altered, decoded record not", "j1", records, edit(1, reencode(changed)), queue.AuditAltered, 2, "record 2 is not what its stored bytes say"},
		{"record and raw altered", "j1", slices.Replace(slices.Clone(records), 1, 2, changed), edit(1, reencode(changed)), queue.AuditAltered, 2,
			"record 2 was altered (its SHA-256 is not the prev of record 3), or record 3 was replaced"},
		{"whitespace added", "j1", records, edit(2, append(slices.Clone(raws[2]), ' ')), queue.AuditAltered, 3, "record 3 was altered"},
		{"not JSON", "j1", slices.Replace(slices.Clone(records), 0, 1, schemas.AuditRecord{}), edit(0, []byte("{")), queue.AuditAltered, 1, "record 1 is not an audit record (it is not JSON"},
		{"another schema", "j1", records, edit(0, []byte(`{"schema":"jetpilot.result.v1"}`)), queue.AuditAltered, 1, `its schema is "jetpilot.result.v1"`},
		{"another job's record", "j1", slices.Replace(slices.Clone(records), 1, 2, otherJob), edit(1, reencode(otherJob)), queue.AuditAltered, 2, `a record of job "j2"`},
		{"verified as another chain", "j2", records, raws, queue.AuditAltered, 1, `where record 1 should be is a record of job "j1"`},
		{"record repeated", "j1", append(slices.Clone(records[:3]), records[2]), append(slices.Clone(raws[:3]), raws[2]), queue.AuditAltered, 4, "another record 3"},
		{"lengths differ", "j1", records[:3], raws, queue.AuditAltered, 1, "3 records for 4 payloads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, rs := tc.records, tc.raws
			switch tc.name {
			case "middle dropped":
				recs, rs = drop(2)
			case "first dropped":
				recs, rs = drop(0)
			}
			rep := queue.VerifyAudit(tc.job, recs, rs)
			assert.False(t, rep.Intact)
			assert.Equal(t, tc.problem, rep.Problem)
			assert.Equal(t, tc.seq, rep.BadSeq)
			assert.Contains(t, rep.Detail, tc.detail)
			assert.Empty(t, rep.Head)
			require.ErrorIs(t, rep.Err(), queue.ErrAuditChainBroken)
		})
	}
	// The newest record changed in its bytes and decoding alike: only a
	// Head noted earlier tells.
	last := records[3]
	last.Reason = "rewritten"
	recs := slices.Replace(slices.Clone(records), 3, 4, last)
	rep2 := queue.VerifyAudit("j1", recs, edit(3, reencode(last)))
	assert.True(t, rep2.Intact)
	assert.NotEqual(t, rep.Head, rep2.Head, "the head gives it away")
}

func TestAuditStreamFullFailsClosed(t *testing.T) {
	t.Parallel()
	const limit = 16 << 10
	e := setupEnv(t, queue.Config{AuditMaxBytes: limit})
	l := newAuditLog(t, e)
	reason := strings.Repeat("x", 1000)
	var err error
	stored := 0
	// Bounded: 16 KiB holds fewer than 16 records of over 1 KiB.
	for i := range 64 {
		if _, err = l.Append(e.ctx, auditRec(fmt.Sprintf("full-%d", i), schemas.AuditDecisionRefused, reason)); err != nil {
			break
		}
		stored++
	}
	require.Error(t, err, "a full AUDIT stream must refuse the record")
	assert.Positive(t, stored)
	assert.Less(t, stored, 16)
	require.ErrorIs(t, err, queue.ErrAuditFull)
	assert.True(t, queue.IsStreamFull(err), "%v", err)
	assert.Contains(t, err.Error(), "stream JETPILOT_AUDIT is full")
	assert.Contains(t, err.Error(), "`jetpilot setup --audit-max-bytes`")

	// Nothing old made room: every stored record is still there.
	s, err := e.js.Stream(e.ctx, "JETPILOT_AUDIT")
	require.NoError(t, err)
	info, err := s.Info(e.ctx)
	require.NoError(t, err)
	assert.EqualValues(t, stored, info.State.Msgs)
	assert.EqualValues(t, 1, info.State.FirstSeq)

	// Raising the limit with setup lets records in again.
	require.NoError(t, queue.Setup(e.ctx, e.js, queue.Config{}))
	_, err = l.Append(e.ctx, auditRec("after", schemas.AuditCancel, ""))
	require.NoError(t, err)
}

func TestAuditStreamDeniesDeleteAndPurge(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	l := newAuditLog(t, e)
	entries := appendN(t, e, l, "keep", 2)
	s, err := e.js.Stream(e.ctx, "JETPILOT_AUDIT")
	require.NoError(t, err)
	require.Error(t, s.DeleteMsg(e.ctx, entries[0].StreamSeq))
	require.Error(t, s.SecureDeleteMsg(e.ctx, entries[0].StreamSeq))
	require.Error(t, s.Purge(e.ctx))
	require.Error(t, s.Purge(e.ctx, jetstream.WithPurgeSubject(e.cfg.AuditSubject("keep"))))

	// Nor can an update take the flags back.
	sc := s.CachedInfo().Config
	sc.DenyDelete, sc.DenyPurge = false, false
	_, err = e.js.UpdateStream(e.ctx, sc)
	require.ErrorContains(t, err, "can not cancel deny message deletes")

	rep, err := l.VerifyChain(e.ctx, "keep")
	require.NoError(t, err)
	assert.True(t, rep.Intact)

	// A rollup could replace a chain with one message: not allowed either.
	msg := nats.NewMsg(e.cfg.AuditSubject("keep"))
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = []byte(`{}`)
	_, err = e.js.PublishMsg(e.ctx, msg)
	require.Error(t, err)
	_, err = l.Chain(e.ctx, "keep")
	require.NoError(t, err)
}

// TestAuditAppendForeignMsgID: a message elsewhere in the stream that
// already holds the Nats-Msg-Id of the chain's next place (JetStream
// dedupes across the stream, for 24 hours) does not stop the chain: the
// record is stored without an id, guarded by the sequence check alone.
func TestAuditAppendForeignMsgID(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	l := newAuditLog(t, e)
	_, err := l.Append(e.ctx, auditRec("dup", schemas.AuditApprovalRequested, ""))
	require.NoError(t, err)
	_, err = e.js.Publish(e.ctx, e.cfg.AuditSubject("elsewhere"), []byte(`{}`), jetstream.WithMsgID(queue.AuditMsgID("dup", 2)))
	require.NoError(t, err)

	rec, err := l.Append(e.ctx, auditRec("dup", schemas.AuditDecisionApplied, "mine"))
	require.NoError(t, err)
	assert.EqualValues(t, 2, rec.Seq)
	entries, err := l.Entries(e.ctx, "dup")
	require.NoError(t, err)
	require.Len(t, entries, 2)
	assert.Equal(t, "mine", entries[1].Record.Reason)
	s, err := e.js.Stream(e.ctx, "JETPILOT_AUDIT")
	require.NoError(t, err)
	m, err := s.GetMsg(e.ctx, entries[1].StreamSeq)
	require.NoError(t, err)
	assert.Empty(t, m.Header.Get(jetstream.MsgIDHeader))
	rep, err := l.VerifyChain(e.ctx, "dup")
	require.NoError(t, err)
	assert.True(t, rep.Intact)

	// And the next record has its id again.
	_, err = l.Append(e.ctx, auditRec("dup", schemas.AuditCancel, ""))
	require.NoError(t, err)
	entries, err = l.Entries(e.ctx, "dup")
	require.NoError(t, err)
	m, err = s.GetMsg(e.ctx, entries[2].StreamSeq)
	require.NoError(t, err)
	assert.Equal(t, "dup:3", m.Header.Get(jetstream.MsgIDHeader))
}
