package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Errors of AuditLog, for errors.Is.
var (
	// ErrAuditChainBroken: a chain has a record missing, altered, or not
	// an audit record at all. VerifyReport says which.
	ErrAuditChainBroken = errors.New("audit chain broken")
	// ErrAuditNotFound: the chain has no records (an unknown job, or one
	// that never asked a human anything).
	ErrAuditNotFound = errors.New("no audit records")
	// ErrAuditConflict: Append lost the race for the chain's next place to
	// other appenders every one of its attempts.
	ErrAuditConflict = errors.New("audit append kept conflicting with concurrent appends")
	// ErrAuditFull: the AUDIT stream has reached its max bytes and refused
	// the record. A decision that cannot be recorded must not be applied.
	ErrAuditFull = errors.New("audit stream full")
)

// auditAppendAttempts bounds Append's compare-and-set retries.
const auditAppendAttempts = 10

// MaxAuditChain is the most records Entries, Chain and VerifyChain read of
// one chain; a longer one is an error, not an unbounded read. A job's
// chain is a few records per approval, the policy chain one per change.
const MaxAuditChain = 10_000

// AuditLog appends records to the hash-chained audit trail in the AUDIT
// stream and reads and verifies the chains. Each job has its own chain on
// Config.AuditSubject(job id); policy changes have one on
// Config.PolicyAuditSubject (records with JobID ""). Safe for concurrent
// use, also by many processes at once: appends to one chain are ordered by
// JetStream's expected-last-subject-sequence check, so they never fork it.
//
// What the chain proves: a record removed from the middle or the start of a
// chain, or changed in storage, is found by Verify, because every record
// holds the SHA-256 of the one before it. It cannot tell that the newest
// records were dropped or the newest one changed (nothing follows them to
// hold their hash): keep VerifyReport.Head somewhere else to check that
// later. Nor does it authenticate the writer: anyone who may publish on an
// audit subject can append a well-formed record, so grant publish there to
// workers (and `jetpilot policy set`'s user, for the policy chain) only.
// The stream's DenyDelete and DenyPurge keep the JetStream API from removing
// records; AuditMaxAge removes them at the end of their time.
type AuditLog struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    Config
}

// NewAuditLog binds to the AUDIT stream, which Setup and EnsureStreams
// create.
func NewAuditLog(ctx context.Context, js jetstream.JetStream, cfg Config) (*AuditLog, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	cfg = cfg.WithDefaults()
	s, err := js.Stream(ctx, cfg.AuditStream())
	if err != nil {
		return nil, fmt.Errorf("open audit log (stream %s; has `jetpilot setup` run?): %w", cfg.AuditStream(), err)
	}
	return &AuditLog{js: js, stream: s, cfg: cfg}, nil
}

// AuditMsgID is the Nats-Msg-Id of a chain's record seq: "<job_id>:<seq>",
// or "~policy:<seq>" in the policy chain (jobID ""; '~' is in no job id).
// The seq is the part after the last ':', so no two chains share an id.
func AuditMsgID(jobID string, seq uint64) string {
	if jobID == "" {
		jobID = "~policy"
	}
	return jobID + ":" + strconv.FormatUint(seq, 10)
}

// chain returns the subject of jobID's chain ("" is the policy chain) and
// how errors name it.
func (l *AuditLog) chain(jobID string) (subject, name string, err error) {
	if jobID == "" {
		return l.cfg.PolicyAuditSubject(), "the policy audit chain", nil
	}
	if err := ValidateJobID(jobID); err != nil {
		return "", "", err
	}
	return l.cfg.AuditSubject(jobID), "the audit chain of job " + jobID, nil
}

// AuditHash is the lowercase hex SHA-256 of a record's payload as
// published: what the next record's Prev holds.
func AuditHash(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// Append adds rec to its chain: JobID's, or the policy chain when JobID is
// "" (only policy_set records, and policy_set only there). It sets Schema,
// Seq (the last record's plus one, 1 for the first) and Prev (the SHA-256
// of the last record's payload exactly as stored), At to now when zero, and
// shortens Reason and Decision to what the schema allows; it returns the
// record as stored.
//
// The publish carries the chain's last stream sequence as the expected
// last subject sequence, so of two appenders that read the same last
// record one wins and the other reads again and retries (at most
// auditAppendAttempts times, then ErrAuditConflict); the Nats-Msg-Id is
// AuditMsgID, left out when a message outside the chain already holds it
// (the sequence check is what keeps a chain whole). A full stream is
// ErrAuditFull, naming the stream. A chain whose last record is not an
// audit record of this chain is not appended to (ErrAuditChainBroken):
// nothing valid could follow it. Every error means the record was not
// stored, except one the server did not answer (a timeout), after which it
// may have been.
func (l *AuditLog) Append(ctx context.Context, rec schemas.AuditRecord) (schemas.AuditRecord, error) {
	subject, name, err := l.chain(rec.JobID)
	if err != nil {
		return rec, fmt.Errorf("append audit record: %w", err)
	}
	switch {
	case rec.JobID == "" && rec.Kind != schemas.AuditPolicySet:
		return rec, fmt.Errorf("append %s record: no job id (only %s records go to the policy chain)", rec.Kind, schemas.AuditPolicySet)
	case rec.JobID != "" && rec.Kind == schemas.AuditPolicySet:
		return rec, fmt.Errorf("append %s record for job %s: policy changes go to the policy chain (job id \"\")", rec.Kind, rec.JobID)
	}
	rec.Schema = schemas.AuditSchemaID
	if rec.At.IsZero() {
		rec.At = time.Now()
	}
	rec.At = rec.At.UTC()
	rec.Reason = shortenRunes(rec.Reason, schemas.AuditMaxReason)
	rec.Decision = shortenRunes(rec.Decision, schemas.AuditMaxDecision)

	// sent are the payloads of earlier attempts, one of which may have been
	// stored although its publish reported a conflict.
	var sent []schemas.AuditRecord
	var sentData [][]byte
	// withoutID: the chain's next id is held by another message (JetStream
	// dedupes ids across the stream); the sequence check alone guards it.
	withoutID := false
	for attempt := 1; attempt <= auditAppendAttempts; attempt++ {
		lastSeq, lastRaw, last, err := l.last(ctx, subject, rec.JobID, name)
		if err != nil {
			return rec, err
		}
		for i, d := range sentData {
			if lastRaw != nil && bytes.Equal(d, lastRaw) {
				return sent[i], nil
			}
		}
		rec.Seq, rec.Prev = 1, ""
		if lastRaw != nil {
			rec.Seq, rec.Prev = last.Seq+1, AuditHash(lastRaw)
		}
		data, err := schemas.Encode(rec)
		if err != nil {
			return rec, fmt.Errorf("append %s record to %s: encode: %w", rec.Kind, name, err)
		}
		if err := schemas.Validate(schemas.SchemaAudit, data); err != nil {
			return rec, fmt.Errorf("append %s record to %s: %w", rec.Kind, name, err)
		}
		if limit := PayloadLimit(l.js); len(data) > limit {
			return rec, fmt.Errorf("append %s record to %s: %w: %d bytes, over the %d a message may hold", rec.Kind, name, ErrTooLarge, len(data), limit)
		}
		opts := []jetstream.PublishOpt{
			jetstream.WithExpectStream(l.cfg.AuditStream()),
			jetstream.WithExpectLastSequencePerSubject(lastSeq),
		}
		if !withoutID {
			opts = append(opts, jetstream.WithMsgID(AuditMsgID(rec.JobID, rec.Seq)))
		}
		ack, err := l.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data}, opts...)
		sent, sentData = append(sent, rec), append(sentData, data)
		switch {
		case err == nil && !ack.Duplicate:
			return rec, nil
		case err == nil:
			// The id was stored already: by an earlier attempt of ours
			// whose ack was lost, by another appender that took this place
			// in the chain, or by a message that is not of the chain.
			stored, gerr := l.stream.GetMsg(ctx, ack.Sequence)
			if gerr != nil {
				return rec, fmt.Errorf("append %s record %d to %s: check the record stored under the same id: %w", rec.Kind, rec.Seq, name, gerr)
			}
			if bytes.Equal(stored.Data, data) {
				return rec, nil
			}
			if stored.Subject != subject {
				withoutID = true
				continue
			}
		case IsWrongLastSequence(err):
			// Another appender took this place: read the chain again.
		case IsStreamFull(err):
			return rec, fmt.Errorf("append %s record to %s: %w: stream %s is full (its max bytes is reached; nothing was stored, and records leave it only at their max age): "+
				"approvals fail closed until the limit is raised with `jetpilot setup --audit-max-bytes`: %w",
				rec.Kind, name, ErrAuditFull, l.cfg.AuditStream(), err)
		case errors.Is(err, jetstream.ErrNoStreamResponse):
			return rec, fmt.Errorf("append %s record to %s: no stream answered on %s (has `jetpilot setup` created stream %s?): %w",
				rec.Kind, name, subject, l.cfg.AuditStream(), err)
		default:
			return rec, fmt.Errorf("append %s record to %s: %w", rec.Kind, name, err)
		}
		if err := backoffJitter(ctx, attempt); err != nil {
			return rec, fmt.Errorf("append %s record to %s: %w", rec.Kind, name, err)
		}
	}
	return rec, fmt.Errorf("append %s record to %s: %w (%d attempts)", rec.Kind, name, ErrAuditConflict, auditAppendAttempts)
}

// last reads a chain's last record: its stream sequence, payload and
// decoding, or 0 and nil when the chain is empty.
func (l *AuditLog) last(ctx context.Context, subject, jobID, name string) (uint64, []byte, schemas.AuditRecord, error) {
	m, err := l.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil, schemas.AuditRecord{}, nil
	}
	if err != nil {
		return 0, nil, schemas.AuditRecord{}, fmt.Errorf("read the last record of %s: %w", name, err)
	}
	var rec schemas.AuditRecord
	if err := json.Unmarshal(m.Data, &rec); err != nil || rec.Schema != schemas.AuditSchemaID || rec.Seq == 0 || rec.JobID != jobID {
		why := "not an audit record of this chain"
		if err != nil {
			why = "not JSON (" + err.Error() + ")"
		}
		return 0, nil, rec, fmt.Errorf("%w: the last record of %s (stream sequence %d) is %s; nothing can follow it", ErrAuditChainBroken, name, m.Sequence, why)
	}
	return m.Sequence, m.Data, rec, nil
}

// backoffJitter waits a random time up to 2ms doubled each attempt (at
// most 250ms), so appenders that conflicted spread out instead of
// conflicting again in lockstep.
func backoffJitter(ctx context.Context, attempt int) error {
	ceiling := min(2*time.Millisecond<<min(attempt, 16), 250*time.Millisecond)
	t := time.NewTimer(rand.N(ceiling))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// shortenRunes cuts s to at most max characters, the last one "…".
func shortenRunes(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max-1 {
			return s[:i] + "…"
		}
		n++
	}
	return s
}

// AuditEntry is one stored record of a chain.
type AuditEntry struct {
	// Record is Raw decoded; zero when DecodeErr is set.
	Record schemas.AuditRecord
	// Raw is the payload exactly as stored: what the next record hashes.
	Raw []byte
	// StreamSeq and Stored are where and when the stream stored it.
	StreamSeq uint64
	Stored    time.Time
	// DecodeErr says why Raw is not JSON at all.
	DecodeErr error
}

// Entries reads jobID's chain ("" for the policy chain) in order, with
// each record's payload as stored: one bounded request per record (the
// stream's next message on the chain's subject), at most MaxAuditChain.
// It is ErrAuditNotFound when the chain has no records. A record that does
// not decode is returned with DecodeErr, for Verify to report.
func (l *AuditLog) Entries(ctx context.Context, jobID string) ([]AuditEntry, error) {
	subject, name, err := l.chain(jobID)
	if err != nil {
		return nil, fmt.Errorf("read audit chain: %w", err)
	}
	var out []AuditEntry
	for seq := uint64(1); ; {
		m, err := l.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s after stream sequence %d: %w", name, seq-1, err)
		}
		if len(out) == MaxAuditChain {
			return nil, fmt.Errorf("read %s: more than %d records", name, MaxAuditChain)
		}
		e := AuditEntry{Raw: m.Data, StreamSeq: m.Sequence, Stored: m.Time}
		if err := json.Unmarshal(m.Data, &e.Record); err != nil {
			e.Record, e.DecodeErr = schemas.AuditRecord{}, err
		}
		out = append(out, e)
		seq = m.Sequence + 1
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read %s: %w", name, ErrAuditNotFound)
	}
	return out, nil
}

// Chain reads jobID's records in order ("" for the policy chain); see
// Entries. A payload that is not JSON is ErrAuditChainBroken. It does not
// verify the chain: VerifyChain does.
func (l *AuditLog) Chain(ctx context.Context, jobID string) ([]schemas.AuditRecord, error) {
	entries, err := l.Entries(ctx, jobID)
	if err != nil {
		return nil, err
	}
	out := make([]schemas.AuditRecord, len(entries))
	for i, e := range entries {
		if e.DecodeErr != nil {
			return nil, fmt.Errorf("%w: record %d of %d (stream sequence %d) is not JSON: %v", ErrAuditChainBroken, i+1, len(entries), e.StreamSeq, e.DecodeErr)
		}
		out[i] = e.Record
	}
	return out, nil
}

// VerifyChain reads jobID's chain ("" for the policy chain) and verifies
// it (VerifyAudit). A broken chain returns the report and an error
// wrapping ErrAuditChainBroken; a chain with no records,
// ErrAuditNotFound.
func (l *AuditLog) VerifyChain(ctx context.Context, jobID string) (VerifyReport, error) {
	entries, err := l.Entries(ctx, jobID)
	if err != nil {
		return VerifyReport{JobID: jobID}, err
	}
	records, raws := SplitEntries(entries)
	rep := VerifyAudit(jobID, records, raws)
	return rep, rep.Err()
}

// SplitEntries returns the records and payloads of entries, for
// VerifyAudit.
func SplitEntries(entries []AuditEntry) ([]schemas.AuditRecord, [][]byte) {
	records := make([]schemas.AuditRecord, len(entries))
	raws := make([][]byte, len(entries))
	for i, e := range entries {
		records[i], raws[i] = e.Record, e.Raw
	}
	return records, raws
}

// AuditProblem is what VerifyAudit found wrong first.
type AuditProblem string

// Problems VerifyAudit reports.
const (
	// AuditMissing: a record is not in the chain (BadSeq is the first
	// one missing).
	AuditMissing AuditProblem = "missing"
	// AuditAltered: a record is not what was appended (BadSeq): its bytes
	// changed, it is not an audit record, or it belongs to another chain.
	AuditAltered AuditProblem = "altered"
)

// VerifyReport is the outcome of verifying a chain.
type VerifyReport struct {
	// JobID is the chain's job, "" for the policy chain.
	JobID string `json:"job_id"`
	// Records is how many records were checked.
	Records int  `json:"records"`
	Intact  bool `json:"intact"`
	// Head is the SHA-256 of the newest record's payload (when the chain
	// is intact): note it elsewhere, and a later change to that record or
	// a later loss of the newest records shows as a different head.
	Head string `json:"head,omitempty"`
	// BadSeq is the seq of the first record missing or altered.
	BadSeq  uint64       `json:"bad_seq,omitempty"`
	Problem AuditProblem `json:"problem,omitempty"`
	// Detail says what is wrong, in words.
	Detail string `json:"detail,omitempty"`
}

// Err is nil for an intact chain, else an error wrapping
// ErrAuditChainBroken that says which record.
func (r VerifyReport) Err() error {
	if r.Intact {
		return nil
	}
	name := "the policy audit chain"
	if r.JobID != "" {
		name = "the audit chain of job " + r.JobID
	}
	return fmt.Errorf("%w: %s: %s", ErrAuditChainBroken, name, r.Detail)
}

// VerifyAudit checks a chain as read, in stream order: raws[i] is the i-th
// record's payload exactly as stored and records[i] its decoding. The
// chain must number its records 1, 2, 3... with no gap, each Prev must be
// the SHA-256 of the payload before it ("" for the first), every record
// must be of jobID's chain ("" for the policy chain), and each record must
// be what its payload says. The report names the first record missing or
// altered. A record whose bytes changed is found through the record after
// it, so a change to the newest record needs the Head noted earlier.
func VerifyAudit(jobID string, records []schemas.AuditRecord, raws [][]byte) VerifyReport {
	rep := VerifyReport{JobID: jobID, Records: len(raws)}
	broken := func(seq uint64, p AuditProblem, format string, args ...any) VerifyReport {
		rep.BadSeq, rep.Problem, rep.Detail = seq, p, fmt.Sprintf(format, args...)
		return rep
	}
	if len(records) != len(raws) {
		return broken(1, AuditAltered, "%d records for %d payloads", len(records), len(raws))
	}
	prevHash := ""
	for i, raw := range raws {
		want := uint64(i + 1)
		var got schemas.AuditRecord
		if err := json.Unmarshal(raw, &got); err != nil || got.Schema != schemas.AuditSchemaID {
			why := fmt.Sprintf("its schema is %q", got.Schema)
			if err != nil {
				why = "it is not JSON: " + err.Error()
			}
			return broken(want, AuditAltered, "record %d is not an audit record (%s)", want, why)
		}
		if !sameRecord(got, records[i]) {
			return broken(got.Seq, AuditAltered, "record %d is not what its stored bytes say", got.Seq)
		}
		if got.JobID != jobID {
			return broken(want, AuditAltered, "where record %d should be is a record of %s", want, chainName(got.JobID))
		}
		switch {
		case got.Seq == 2 && want == 1:
			return broken(1, AuditMissing, "record 1 is missing: the chain starts at record 2 (removed, or aged out of the stream)")
		case got.Seq > want && want == 1:
			return broken(1, AuditMissing, "records 1 to %d are missing: the chain starts at record %d (removed, or aged out of the stream)", got.Seq-1, got.Seq)
		case got.Seq > want:
			return broken(want, AuditMissing, "record %d is missing: record %d follows record %d", want, got.Seq, want-1)
		case got.Seq < want:
			return broken(want, AuditAltered, "where record %d should be is another record %d (a copy, or one put there)", want, got.Seq)
		}
		if want == 1 && got.Prev != "" {
			return broken(1, AuditAltered, "record 1 has a prev (%s): it is not the first record of the chain", got.Prev)
		}
		if want > 1 && got.Prev != prevHash {
			return broken(want-1, AuditAltered, "record %d was altered (its SHA-256 is not the prev of record %d), or record %d was replaced", want-1, want, want)
		}
		prevHash = AuditHash(raw)
	}
	rep.Intact, rep.Head = true, prevHash
	return rep
}

// sameRecord reports whether a and b say the same (At compared as an
// instant).
func sameRecord(a, b schemas.AuditRecord) bool {
	if !a.At.Equal(b.At) {
		return false
	}
	a.At, b.At = time.Time{}, time.Time{}
	return a == b
}

func chainName(jobID string) string {
	if jobID == "" {
		return "the policy chain"
	}
	return "job " + strconv.Quote(jobID)
}

// auditHeadroom is the room Ready wants left in the AUDIT stream: a few
// records.
const auditHeadroom = 64 << 10

// Ready reports whether the AUDIT stream can take another record: it is
// reachable and not within a few records of its max bytes. A worker asks
// before it applies a human's decision, so an approval fails closed when
// the audit is full, instead of applying and then finding nowhere to say
// so.
func (l *AuditLog) Ready(ctx context.Context) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit stream %s: %w", l.cfg.AuditStream(), err)
	}
	if max := info.Config.MaxBytes; max > 0 && int64(info.State.Bytes)+auditHeadroom > max {
		return fmt.Errorf("audit stream %s holds %d of its %d bytes: %w (raise it with jetpilot setup --audit-max-bytes)",
			l.cfg.AuditStream(), info.State.Bytes, max, ErrAuditFull)
	}
	return nil
}
