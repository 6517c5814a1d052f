package queue

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Config names every JetStream object jetpilot uses and holds their limits.
// The zero value is usable: every zero field takes the default documented on
// it, so callers set only what they change. Methods take Config by value and
// apply the defaults themselves.
type Config struct {
	// Prefix starts every subject ("<prefix>.jobs.<profile>"), the KV buckets
	// ("<prefix>_runs", "<prefix>_policy") and the durable consumers ("<prefix>-workers"); the
	// streams use it upper-cased ("<PREFIX>_JOBS"). Letters, digits, '_' and
	// '-' only, because it is part of stream and bucket names. Default "jetpilot".
	Prefix string

	// Replicas is the replica count of every stream and KV bucket.
	// Default 1; use 3 on a cluster.
	Replicas int

	// Storage of every stream and KV bucket. Default (zero value)
	// jetstream.FileStorage, so jobs survive a server restart.
	Storage jetstream.StorageType

	// JobsDuplicateWindow is how long JetStream remembers a job id
	// (Nats-Msg-Id) and drops a second submit of it. Default 24h.
	JobsDuplicateWindow time.Duration

	// DuplicateWindow is the Nats-Msg-Id window of the RESULTS, APPROVALS and
	// DEAD streams, so a result republished by a worker that took the job
	// over is dropped. Capped at each stream's max age. Default 24h.
	DuplicateWindow time.Duration

	// ResultsMaxAge is how long results are kept. Default 7 days.
	ResultsMaxAge time.Duration
	// ApprovalsMaxAge is how long approval requests are kept; unconsumed
	// decisions expire after the same time. Default 7 days.
	ApprovalsMaxAge time.Duration
	// EventsMaxAge is how long live events are kept. Default 1 hour.
	EventsMaxAge time.Duration
	// DeadMaxAge is how long dead letters are kept. Default 30 days.
	DeadMaxAge time.Duration
	// AuditMaxAge is how long audit records (every approval, human
	// decision applied or refused, expiry, cancel and policy change) are
	// kept. Default 400 days: a year of history plus a month's margin, so
	// a yearly review still finds the whole year. JetStream removes a
	// record once it is older, whatever the deny-delete flag says.
	AuditMaxAge time.Duration

	// AckWait is how long a worker may hold a job or decision without
	// acking (or sending in-progress heartbeats) before JetStream redelivers
	// it. Default 30s.
	AckWait time.Duration

	// MaxDeliver is the worker's own limit: after this many deliveries
	// (msg metadata NumDelivered) the worker publishes a final failed
	// result, dead-letters the job and acks it. Default 5.
	//
	// It is deliberately NOT the consumer's MaxDeliver: a consumer that hit
	// its limit would stop redelivering the job silently, with no result and
	// no dead letter, breaking "nothing is lost, nothing is silent". The
	// worker consumers are therefore created with MaxDeliver -1 (unlimited)
	// and the worker enforces this value itself.
	MaxDeliver int

	// MaxAckPending caps jobs handed out but not yet acked, across all
	// workers sharing a consumer. Default 1000.
	MaxAckPending int

	// Storage limits: the most bytes each stream holds (JetStream
	// MaxBytes). Zero takes the default constant below; -1 is unlimited
	// (only for a deployment that bounds storage some other way, such as a
	// JetStream account limit). The defaults are sized for a small
	// deployment on one modest disk (5.4 GiB in all), so a flood of jobs
	// or a runaway agent fills a stream, not the disk that every stream
	// and the runs bucket share. JetStream reserves each stream's MaxBytes
	// up front: a server with less JetStream storage than their sum
	// refuses `jetpilot setup` ("insufficient storage resources"), so lower
	// them there.
	//
	// What happens when a stream is full depends on whether losing its
	// oldest message loses work (see StreamConfigs): JOBS, DECISIONS,
	// CONTROL and AUDIT refuse the new message (DiscardNew), so the
	// producer gets an error instead of a job, a human's answer, an expiry
	// timer or an audit record vanishing;
	// RESULTS, APPROVALS, EVENTS and DEAD drop their oldest messages
	// (DiscardOld), as they already do at their max age: they are records
	// for readers, and a worker must never be stopped from finishing a job
	// because old records have not aged out yet.

	// JobsMaxBytes bounds JOBS. Default 1 GiB: a million 1 KiB jobs
	// waiting, far more than a small fleet works through before someone
	// notices; beyond it, submitting fails with an error naming the stream.
	JobsMaxBytes int64
	// ResultsMaxBytes bounds RESULTS. Default 1 GiB: a result carries at
	// most 256 KiB of agent text, typically a few KiB, so this keeps the
	// 7 days of results of a busy small deployment.
	ResultsMaxBytes int64
	// ApprovalsMaxBytes bounds APPROVALS. Default 256 MiB: a request is a
	// few KiB and humans answer few of them per job.
	ApprovalsMaxBytes int64
	// DecisionsMaxBytes bounds DECISIONS. Default 64 MiB: decisions are
	// small and consumed as soon as a worker is free; a full stream means
	// nobody is consuming, and the human's publish fails visibly.
	DecisionsMaxBytes int64
	// ControlMaxBytes bounds CONTROL. Default 64 MiB: one small expiry
	// timer per paused run, plus cancels, is tens of thousands of pauses.
	ControlMaxBytes int64
	// EventsMaxBytes bounds EVENTS. Default 1 GiB: live events are the
	// bulkiest traffic (coalesced text, tool results) and only an hour of
	// them is kept anyway; the oldest go first.
	EventsMaxBytes int64
	// DeadMaxBytes bounds DEAD. Default 1 GiB: a dead letter holds the job
	// as received (at most a NATS message), and 30 days of them are kept.
	DeadMaxBytes int64
	// AuditMaxBytes bounds AUDIT. Default 1 GiB: a record is well under
	// 1 KiB and a job with one approval writes two or three, so it holds
	// about a million records, some 2,500 a day for the 400 days kept.
	// A full AUDIT refuses new records (AuditLog.Append returns
	// ErrAuditFull), and since a decision that cannot be recorded is not
	// applied, approvals then fail closed until the limit is raised with
	// `jetpilot setup --audit-max-bytes` or old records age out.
	AuditMaxBytes int64
	// SchedulesMaxBytes bounds SCHEDULES. Default 64 MiB: each schedule
	// keeps its job template and its last firing, a few KiB for a typical
	// job, so tens of thousands of schedules. The server allows message
	// schedules only on a stream that drops its oldest messages when full,
	// which could be definitions, so Schedules.Add refuses a schedule that
	// would fill it.
	SchedulesMaxBytes int64
}

// Defaults of Config.
const (
	DefaultPrefix              = "jetpilot"
	DefaultReplicas            = 1
	DefaultJobsDuplicateWindow = 24 * time.Hour
	DefaultDuplicateWindow     = 24 * time.Hour
	DefaultResultsMaxAge       = 7 * 24 * time.Hour
	DefaultApprovalsMaxAge     = 7 * 24 * time.Hour
	DefaultEventsMaxAge        = time.Hour
	DefaultDeadMaxAge          = 30 * 24 * time.Hour
	DefaultAuditMaxAge         = 400 * 24 * time.Hour
	DefaultAckWait             = 30 * time.Second
	DefaultMaxDeliver          = 5
	DefaultMaxAckPending       = 1000

	DefaultJobsMaxBytes      int64 = 1 << 30
	DefaultResultsMaxBytes   int64 = 1 << 30
	DefaultApprovalsMaxBytes int64 = 256 << 20
	DefaultDecisionsMaxBytes int64 = 64 << 20
	DefaultControlMaxBytes   int64 = 64 << 20
	DefaultEventsMaxBytes    int64 = 1 << 30
	DefaultDeadMaxBytes      int64 = 1 << 30
	DefaultAuditMaxBytes     int64 = 1 << 30
	DefaultSchedulesMaxBytes int64 = 64 << 20
)

// UnlimitedBytes as a stream's max bytes leaves it unbounded by size.
const UnlimitedBytes int64 = -1

// WithDefaults returns cfg with every zero field set to its default.
func (cfg Config) WithDefaults() Config {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = DefaultReplicas
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&cfg.JobsDuplicateWindow, DefaultJobsDuplicateWindow)
	setDur(&cfg.DuplicateWindow, DefaultDuplicateWindow)
	setDur(&cfg.ResultsMaxAge, DefaultResultsMaxAge)
	setDur(&cfg.ApprovalsMaxAge, DefaultApprovalsMaxAge)
	setDur(&cfg.EventsMaxAge, DefaultEventsMaxAge)
	setDur(&cfg.DeadMaxAge, DefaultDeadMaxAge)
	setDur(&cfg.AuditMaxAge, DefaultAuditMaxAge)
	setDur(&cfg.AckWait, DefaultAckWait)
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = DefaultMaxDeliver
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = DefaultMaxAckPending
	}
	for _, b := range cfg.maxBytes() {
		if *b.v == 0 {
			*b.v = b.def
		}
	}
	return cfg
}

// maxBytesLimit is one stream's max bytes field, for defaults and checks.
type maxBytesLimit struct {
	name string
	v    *int64
	def  int64
}

// maxBytes lists the max bytes fields of cfg (pointers into cfg).
func (cfg *Config) maxBytes() []maxBytesLimit {
	return []maxBytesLimit{
		{"jobs max bytes", &cfg.JobsMaxBytes, DefaultJobsMaxBytes},
		{"results max bytes", &cfg.ResultsMaxBytes, DefaultResultsMaxBytes},
		{"approvals max bytes", &cfg.ApprovalsMaxBytes, DefaultApprovalsMaxBytes},
		{"decisions max bytes", &cfg.DecisionsMaxBytes, DefaultDecisionsMaxBytes},
		{"control max bytes", &cfg.ControlMaxBytes, DefaultControlMaxBytes},
		{"events max bytes", &cfg.EventsMaxBytes, DefaultEventsMaxBytes},
		{"dead max bytes", &cfg.DeadMaxBytes, DefaultDeadMaxBytes},
		{"audit max bytes", &cfg.AuditMaxBytes, DefaultAuditMaxBytes},
		{"schedules max bytes", &cfg.SchedulesMaxBytes, DefaultSchedulesMaxBytes},
	}
}

// Validate reports every problem with cfg (after defaults) in one error.
func (cfg Config) Validate() error {
	cfg = cfg.WithDefaults()
	var errs []error
	if err := ValidatePrefix(cfg.Prefix); err != nil {
		errs = append(errs, err)
	}
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas: must be 1-5, got %d", cfg.Replicas))
	}
	if cfg.Storage != jetstream.FileStorage && cfg.Storage != jetstream.MemoryStorage {
		errs = append(errs, fmt.Errorf("storage: must be file or memory, got %d", int(cfg.Storage)))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"jobs duplicate window", cfg.JobsDuplicateWindow},
		{"duplicate window", cfg.DuplicateWindow},
		{"results max age", cfg.ResultsMaxAge},
		{"approvals max age", cfg.ApprovalsMaxAge},
		{"events max age", cfg.EventsMaxAge},
		{"dead max age", cfg.DeadMaxAge},
		{"audit max age", cfg.AuditMaxAge},
		{"ack wait", cfg.AckWait},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %s", d.name, d.v))
		}
	}
	if cfg.MaxDeliver < 1 {
		errs = append(errs, fmt.Errorf("max deliver: must be at least 1, got %d", cfg.MaxDeliver))
	}
	if cfg.MaxAckPending < 1 {
		errs = append(errs, fmt.Errorf("max ack pending: must be at least 1, got %d", cfg.MaxAckPending))
	}
	for _, b := range cfg.maxBytes() {
		if *b.v < UnlimitedBytes {
			errs = append(errs, fmt.Errorf("%s: must be positive, or -1 for unlimited, got %d", b.name, *b.v))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid queue config: %w", errors.Join(errs...))
	}
	return nil
}

// ValidatePrefix checks that prefix can start subjects, stream names, the
// bucket name and consumer names: 1-64 letters, digits, '_' or '-'.
func ValidatePrefix(prefix string) error {
	if err := schemas.CheckName(prefix, 64); err != nil {
		return fmt.Errorf("prefix %q: %w", prefix, err)
	}
	return nil
}

// ValidateProfile checks that profile is one NATS subject token that can
// also end a consumer name; the rule is schemas.ValidateProfile's.
func ValidateProfile(profile string) error { return schemas.ValidateProfile(profile) }

// ValidateJobID checks a job id as DESIGN.md defines it (the rule is
// schemas.ValidateJobID's). Everything that puts a job id on a subject or in
// the KV store checks it first, so a bad id is a clear error, not a
// malformed subject.
func ValidateJobID(id string) error { return schemas.ValidateJobID(id) }

// subjectID turns a job id into the subject tokens that end its subjects.
// A valid job id is used as is, except that an empty dot-separated part
// (a leading, trailing or doubled '.') becomes "~", which no job id
// contains, so the mapping stays one-to-one and the subject stays valid.
func subjectID(jobID string) string {
	if !strings.HasPrefix(jobID, ".") && !strings.HasSuffix(jobID, ".") && !strings.Contains(jobID, "..") {
		return jobID
	}
	parts := strings.Split(jobID, ".")
	for i, p := range parts {
		if p == "" {
			parts[i] = "~"
		}
	}
	return strings.Join(parts, ".")
}

func (cfg Config) prefix() string {
	if cfg.Prefix == "" {
		return DefaultPrefix
	}
	return cfg.Prefix
}

func (cfg Config) subject(kind string, rest string) string {
	return cfg.prefix() + "." + kind + "." + rest
}

// JobSubject is "<prefix>.jobs.<profile>", where producers publish jobs.
func (cfg Config) JobSubject(profile string) string { return cfg.subject("jobs", profile) }

// JobsWildcard is "<prefix>.jobs.>", every profile's jobs.
func (cfg Config) JobsWildcard() string { return cfg.subject("jobs", ">") }

// ResultSubject is "<prefix>.results.<job_id>".
func (cfg Config) ResultSubject(jobID string) string {
	return cfg.subject("results", subjectID(jobID))
}

// ResultsWildcard is "<prefix>.results.>".
func (cfg Config) ResultsWildcard() string { return cfg.subject("results", ">") }

// ApprovalSubject is "<prefix>.approvals.<job_id>".
func (cfg Config) ApprovalSubject(jobID string) string {
	return cfg.subject("approvals", subjectID(jobID))
}

// ApprovalsWildcard is "<prefix>.approvals.>".
func (cfg Config) ApprovalsWildcard() string { return cfg.subject("approvals", ">") }

// DecisionSubject is "<prefix>.decisions.<job_id>".
func (cfg Config) DecisionSubject(jobID string) string {
	return cfg.subject("decisions", subjectID(jobID))
}

// DecisionsWildcard is "<prefix>.decisions.>".
func (cfg Config) DecisionsWildcard() string { return cfg.subject("decisions", ">") }

// EventSubject is "<prefix>.events.<job_id>".
func (cfg Config) EventSubject(jobID string) string {
	return cfg.subject("events", subjectID(jobID))
}

// EventsWildcard is "<prefix>.events.>".
func (cfg Config) EventsWildcard() string { return cfg.subject("events", ">") }

// DeadSubject is "<prefix>.dead.<job_id>". Dead letters of jobs whose id
// could not be read go to DeadSubject(UnknownJobID).
func (cfg Config) DeadSubject(jobID string) string {
	return cfg.subject("dead", subjectID(jobID))
}

// DeadWildcard is "<prefix>.dead.>".
func (cfg Config) DeadWildcard() string { return cfg.subject("dead", ">") }

// AuditSubject is "<prefix>.audit.<job_id>": the job's audit chain.
func (cfg Config) AuditSubject(jobID string) string {
	return cfg.subject("audit", subjectID(jobID))
}

// AuditWildcard is "<prefix>.audit.>", every job's audit chain (and not
// the policy chain).
func (cfg Config) AuditWildcard() string { return cfg.subject("audit", ">") }

// PolicyAuditSubject is "<prefix>.policy_audit": the chain of policy
// changes, in the AUDIT stream with the jobs' chains. It is deliberately
// not under "<prefix>.audit.": every job's subject is
// "<prefix>.audit.<job_id>", three or more tokens with "audit" second, so
// no job id, however chosen, can name this two-token subject and append to
// or read the policy chain as if it were its own; and a grant or filter on
// "<prefix>.audit.>" (every job's records) or "<prefix>.audit.<job_id>"
// (one job's) never includes the policy changes, which are the operator's.
func (cfg Config) PolicyAuditSubject() string { return cfg.prefix() + ".policy_audit" }

// UnknownJobID ends the dead-letter subject of a job whose id could not be
// read. It is not a valid job id ('~' is not allowed), so it cannot clash.
const UnknownJobID = "~unknown"

// CancelSubject is "<prefix>.cancel.<job_id>": a core NATS request on it asks
// whichever worker holds the job to cancel its run. It has no stream.
func (cfg Config) CancelSubject(jobID string) string {
	return cfg.subject("cancel", subjectID(jobID))
}

// CancelWildcard is "<prefix>.cancel.>", what workers subscribe to.
func (cfg Config) CancelWildcard() string { return cfg.subject("cancel", ">") }

// SteerSubject is "<prefix>.steer.<job_id>": core NATS requests that steer
// the job's running agent (schema steer.v1).
func (cfg Config) SteerSubject(jobID string) string {
	return cfg.subject("steer", subjectID(jobID))
}

// SteerWildcard is "<prefix>.steer.>", what workers subscribe to.
func (cfg Config) SteerWildcard() string { return cfg.subject("steer", ">") }

// HolderSteerSubject is "<prefix>.holder.<worker>.steer": the worker's
// inbox for steering requests forwarded by the worker that answered them.
func (cfg Config) HolderSteerSubject(worker string) string {
	return cfg.HolderSubject(worker) + ".steer"
}

// ControlSubject is "<prefix>.control.<job_id>": workers' own control
// messages about a paused job (approval expiry timers, cancels), on their
// own stream so that no producer permission on decisions can forge one.
func (cfg Config) ControlSubject(jobID string) string {
	return cfg.subject("control", subjectID(jobID))
}

// ControlWildcard is "<prefix>.control.>".
func (cfg Config) ControlWildcard() string { return cfg.subject("control", ">") }

// HolderSubject is "<prefix>.holder.<worker>": the worker's own inbox, on
// which the worker that answered a cancel request forwards it to the worker
// holding the job. Worker names are encoded like job ids (dots and other
// characters a subject token may not hold are escaped).
func (cfg Config) HolderSubject(worker string) string {
	return cfg.subject("holder", holderToken(worker))
}

// holderToken is a worker name as one subject token.
func holderToken(name string) string {
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, "=%X", r)
		}
	}
	if b.Len() == 0 {
		return "~"
	}
	return b.String()
}

func (cfg Config) streamName(kind string) string {
	return strings.ToUpper(cfg.prefix()) + "_" + kind
}

// JobsStream is "<PREFIX>_JOBS".
func (cfg Config) JobsStream() string { return cfg.streamName("JOBS") }

// ResultsStream is "<PREFIX>_RESULTS".
func (cfg Config) ResultsStream() string { return cfg.streamName("RESULTS") }

// ApprovalsStream is "<PREFIX>_APPROVALS".
func (cfg Config) ApprovalsStream() string { return cfg.streamName("APPROVALS") }

// DecisionsStream is "<PREFIX>_DECISIONS".
func (cfg Config) DecisionsStream() string { return cfg.streamName("DECISIONS") }

// ControlStream is "<PREFIX>_CONTROL".
func (cfg Config) ControlStream() string { return cfg.streamName("CONTROL") }

// EventsStream is "<PREFIX>_EVENTS".
func (cfg Config) EventsStream() string { return cfg.streamName("EVENTS") }

// DeadStream is "<PREFIX>_DEAD".
func (cfg Config) DeadStream() string { return cfg.streamName("DEAD") }

// AuditStream is "<PREFIX>_AUDIT".
func (cfg Config) AuditStream() string { return cfg.streamName("AUDIT") }

// RunsBucket is "<prefix>_runs", the KV bucket of runs.
func (cfg Config) RunsBucket() string { return cfg.prefix() + "_runs" }

// PolicyBucket is "<prefix>_policy", the KV bucket of the fleet's policy
// document (see PolicyStore).
func (cfg Config) PolicyBucket() string { return cfg.prefix() + "_policy" }

// WorkersDurable is "<prefix>-workers", the catch-all worker consumer.
func (cfg Config) WorkersDurable() string { return cfg.prefix() + "-workers" }

// ProfileWorkersDurable is "<prefix>-workers-<profile>", the worker
// consumer of one profile.
func (cfg Config) ProfileWorkersDurable(profile string) string {
	return cfg.WorkersDurable() + "-" + profile
}

// DecidersDurable is "<prefix>-deciders", the consumer of DECISIONS.
func (cfg Config) DecidersDurable() string { return cfg.prefix() + "-deciders" }

// ControllersDurable is "<prefix>-controllers", the consumer of CONTROL.
func (cfg Config) ControllersDurable() string { return cfg.prefix() + "-controllers" }
