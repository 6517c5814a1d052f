package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// RunRecord is what the fleet knows about one job's agent run. It is how
// the at-most-once rule holds: a worker that gets a job again finds the
// record and re-attaches to the run instead of starting a second one.
type RunRecord struct {
	JobID     string `json:"job_id"`
	SessionID string `json:"session_id,omitempty"`
	RunID     string `json:"run_id,omitempty"`
	// LastEventID is the agent server event cursor already processed.
	LastEventID uint64 `json:"last_event_id,omitempty"`
	// State is where the run is (see RunState); written by
	// RunStore.Transition only.
	State RunState `json:"state"`
	// Owner is the worker holding the job now.
	Owner   string `json:"owner,omitempty"`
	Phase   int    `json:"phase"`
	Attempt int    `json:"attempt"`
	// Stdout is the agent text of earlier phases (before pauses).
	Stdout            string    `json:"stdout,omitempty"`
	ApprovalID        string    `json:"approval_id,omitempty"`
	ApprovalExpiresAt time.Time `json:"approval_expires_at,omitzero"`
	// PausedAt is when the pending approval was requested.
	PausedAt  time.Time `json:"paused_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at"`

	// StartedAt is when the job first started; Deadline is when its timeout
	// runs out, so a worker that re-attaches enforces the same timeout.
	StartedAt time.Time `json:"started_at,omitzero"`
	Deadline  time.Time `json:"deadline,omitzero"`
	// Job is the job without its prompt and caller context: what later
	// phases need (tool policy, metadata) and nothing that can be large.
	Job schemas.Job `json:"job"`
	// Pending are the tool calls the pending approval asks about, and
	// AutoResolved how many calls of that turn the policy settled.
	Pending      []schemas.ToolCall `json:"pending,omitempty"`
	AutoResolved int                `json:"auto_resolved,omitempty"`
	// DecidedApproval names what resumed the run from its last pause (an
	// approval id, or "expiry:"/"cancel:" and one), and DecidedPending the
	// calls it decided, so a redelivered decision carries on instead of
	// being refused as settled.
	DecidedApproval string             `json:"decided_approval,omitempty"`
	DecidedPending  []schemas.ToolCall `json:"decided_pending,omitempty"`
	// Held are the policy's verdicts on the calls of the paused proposal
	// that do not wait for a human. They are sent together with the human's
	// answer, in one request: the agent server never applies a decision
	// that arrives while another call of the same batch executes.
	Held map[string]schemas.ToolDecision `json:"held,omitempty"`
	// Decided are the tool call ids the job has sent decisions for (the
	// newest few hundred): the agent server kills a run whose call is
	// decided twice, so a worker that takes the job over never re-decides
	// them.
	Decided []string `json:"decided,omitempty"`
	// MessageBase is how many messages the session had before this job's
	// run: a conversation's session (session_key) holds earlier jobs'.
	MessageBase int `json:"message_base,omitempty"`
	// RunStartedAt is when the run id was first known: an agent server
	// whose uptime is shorter restarted under the run.
	RunStartedAt time.Time `json:"run_started_at,omitzero"`
	// StartFailedAt is when the job first failed to get its run started
	// (agent server down or refusing the token): it is retried until
	// the worker's start budget, counted from then, is spent.
	StartFailedAt time.Time `json:"start_failed_at,omitzero"`
	// JobDigest is the job message's schemas.JobDigest, for the results of
	// later phases (carried by decisions, not by the job message).
	JobDigest string `json:"job_digest,omitempty"`
	// SettleFailures counts the phase outcomes that could not be published;
	// at the worker's MaxDeliver the job ends with a minimal result.
	SettleFailures int `json:"settle_failures,omitempty"`
	// ToolCalls counts the calls settled in earlier phases, and ToolRules
	// the calls each policy rule decided in them.
	ToolCalls schemas.ToolCallCounts        `json:"tool_calls"`
	ToolRules map[string]schemas.RuleCounts `json:"tool_rules,omitempty"`
	// UsedTokens is what the job's earlier phases used, counted against
	// the policy's jobs.max_tokens.
	UsedTokens int64 `json:"used_tokens,omitempty"`
	// CancelRequested asks the worker that re-attaches to cancel the run:
	// set by a cancel request while the holding worker may be gone.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// EventSeq is the seq of the job's last live event.
	EventSeq uint64 `json:"event_seq,omitempty"`

	// PendingDigest is the pending approval's pending_digest: a decision
	// must echo it, so it cannot be replayed onto other calls.
	PendingDigest string `json:"pending_digest,omitempty"`
	// Need says who may decide the pending approval and how many must.
	Need *schemas.ApprovalNeeds `json:"need,omitempty"`
	// Votes are the approvers' allows on the pending approval so far, one
	// per approver, until the quorum is met.
	Votes []Vote `json:"votes,omitempty"`
	// Requester and RequesterKey name the producer who signed the job
	// (requested_by, verified against the policy's producers); empty for
	// an unsigned job.
	Requester    string `json:"requester,omitempty"`
	RequesterKey string `json:"requester_key,omitempty"`
	// Approvals are the job's decided approvals, for its final result
	// (the newest MaxApprovals).
	Approvals []schemas.ApprovalOutcome `json:"approvals,omitempty"`
	// TraceParent is the W3C traceparent of the job's first span, so the
	// phases that decisions and control messages resume join its trace.
	TraceParent string `json:"traceparent,omitempty"`
}

// Vote is one approver's verified allow on a pending approval.
type Vote struct {
	Approver string    `json:"approver"`
	Key      string    `json:"key"`
	At       time.Time `json:"at"`
	// Msg names the decision message (messageKey), so its redelivery is
	// told from a second vote.
	Msg string `json:"msg"`
}

// MaxApprovals bounds the approvals a record (and a final result) lists.
const MaxApprovals = 32

var (
	// ErrRunNotFound: no run is recorded for the job.
	ErrRunNotFound = errors.New("run not found")
	// ErrRunExists: Create found a run already recorded for the job.
	ErrRunExists = errors.New("run already exists")
	// ErrRevisionMismatch: Update's expected revision is not the current
	// one; someone else changed the record. Get it again and decide.
	ErrRevisionMismatch = errors.New("run revision mismatch")
)

// RunStore keeps RunRecords in the "<prefix>_runs" KV bucket, keyed by
// RunKey(job id). Safe for concurrent use.
type RunStore struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	bucket string
	limit  int           // encoded bytes a record may take (the connection's MaxPayload)
	ttl    time.Duration // how long a settled record is kept
}

// NewRunStore binds to the runs bucket, which Setup creates.
func NewRunStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*RunStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open run store: %w", err)
	}
	kv, err := js.KeyValue(ctx, cfg.RunsBucket())
	if err != nil {
		return nil, fmt.Errorf("open run store (KV bucket %s; has `jetpilot setup` run?): %w", cfg.RunsBucket(), err)
	}
	cfg = cfg.WithDefaults()
	return &RunStore{kv: kv, js: js, bucket: cfg.RunsBucket(), limit: PayloadLimit(js), ttl: cfg.ResultsMaxAge}, nil
}

// RunKey is the KV key of a job's run. Job ids may hold ':' (not a KV key
// character) and '.' in places a key may not (leading, trailing, doubled),
// so every byte outside [A-Za-z0-9_-] is written as '=' and two upper-case
// hex digits: "build:42.a" becomes "build=3A42=2Ea". '=' itself is escaped
// too, so the mapping is reversible (see JobIDFromRunKey) and keys stay
// readable in `nats kv ls`.
func RunKey(jobID string) (string, error) {
	if err := ValidateJobID(jobID); err != nil {
		return "", err
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(jobID) + 8)
	for i := 0; i < len(jobID); i++ {
		c := jobID[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xF])
	}
	return b.String(), nil
}

// JobIDFromRunKey reverses RunKey.
func JobIDFromRunKey(key string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c != '=' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(key) {
			return "", fmt.Errorf("run key %q: truncated escape at byte %d", key, i)
		}
		hi, ok1 := unhex(key[i+1])
		lo, ok2 := unhex(key[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("run key %q: bad escape %q at byte %d", key, key[i:i+3], i)
		}
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	id := b.String()
	if err := ValidateJobID(id); err != nil {
		return "", fmt.Errorf("run key %q: %w", key, err)
	}
	return id, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Get returns the job's run and its revision, or ErrRunNotFound.
func (s *RunStore) Get(ctx context.Context, jobID string) (RunRecord, uint64, error) {
	key, err := RunKey(jobID)
	if err != nil {
		return RunRecord{}, 0, fmt.Errorf("get run: %w", err)
	}
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return RunRecord{}, 0, fmt.Errorf("get run of job %s: %w", jobID, ErrRunNotFound)
		}
		return RunRecord{}, 0, fmt.Errorf("get run of job %s: %w", jobID, err)
	}
	var rec RunRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return RunRecord{}, 0, fmt.Errorf("get run of job %s: decode record at revision %d: %w", jobID, e.Revision(), err)
	}
	return rec, e.Revision(), nil
}

// create records a new run; ErrRunExists if the job already has one. This
// is the claim that makes an agent run start at most once per job.
func (s *RunStore) create(ctx context.Context, rec RunRecord) (uint64, error) {
	key, data, err := s.encodeRun(rec)
	if err != nil {
		return 0, fmt.Errorf("create run: %w", err)
	}
	rev, err := s.kv.Create(ctx, key, data)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("create run of job %s: %w", rec.JobID, ErrRunExists)
		}
		return 0, fmt.Errorf("create run of job %s: %w", rec.JobID, err)
	}
	return rev, nil
}

// update replaces the run if its revision is still expectedRev
// (compare-and-set); ErrRevisionMismatch otherwise.
func (s *RunStore) update(ctx context.Context, rec RunRecord, expectedRev uint64) (uint64, error) {
	key, data, err := s.encodeRun(rec)
	if err != nil {
		return 0, fmt.Errorf("update run: %w", err)
	}
	rev, err := s.kv.Update(ctx, key, data, expectedRev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("update run of job %s at revision %d: %w", rec.JobID, expectedRev, ErrRevisionMismatch)
		}
		return 0, fmt.Errorf("update run of job %s: %w", rec.JobID, err)
	}
	return rev, nil
}

func (s *RunStore) encodeRun(rec RunRecord) (string, []byte, error) {
	key, err := RunKey(rec.JobID)
	if err != nil {
		return "", nil, err
	}
	switch rec.State {
	case RunStarting, RunRunning, RunPaused, RunDone:
	default:
		return "", nil, fmt.Errorf("job %s: state must be starting, running, paused or done, got %q", rec.JobID, rec.State)
	}
	rec.UpdatedAt = time.Now().UTC()
	data, err := fitRecord(rec, s.limit)
	if err != nil {
		return "", nil, fmt.Errorf("job %s: encode run record: %w", rec.JobID, err)
	}
	return key, data, nil
}

// finishWithTTL writes a settled record so that it expires after s.ttl: a
// publish to the bucket's subject for the key with a per-message TTL and a
// check that the key is still at expectedRev (what Update does), since
// nats.go's KV takes a TTL only on Create, and a delete then create would
// let a crash in between start a second run. The bucket needs
// LimitMarkerTTL (Setup sets it).
func (s *RunStore) finishWithTTL(ctx context.Context, rec RunRecord, expectedRev uint64) (uint64, error) {
	key, data, err := s.encodeRun(rec)
	if err != nil {
		return 0, fmt.Errorf("finish run: %w", err)
	}
	msg := &nats.Msg{Subject: "$KV." + s.bucket + "." + key, Data: data}
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(expectedRev), jetstream.WithMsgTTL(s.ttl))
	if err != nil {
		if IsWrongLastSequence(err) { // 10071, or 10164 on a replicated bucket
			return 0, fmt.Errorf("finish run of job %s at revision %d: %w", rec.JobID, expectedRev, ErrRevisionMismatch)
		}
		return 0, fmt.Errorf("finish run of job %s: %w", rec.JobID, err)
	}
	return ack.Sequence, nil
}
