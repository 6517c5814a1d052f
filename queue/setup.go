package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfigs returns the configuration of the nine streams, in the order
// JOBS, RESULTS, APPROVALS, DECISIONS, EVENTS, DEAD, CONTROL, AUDIT,
// SCHEDULES, as DESIGN.md ("Subjects and streams") fixes them.
//
// Every stream is bounded by size (Config's *MaxBytes). The work queues,
// JOBS, DECISIONS and CONTROL, are DiscardNew: each message in them is work
// nobody has done yet (a job, a human's answer, an approval timer), so when
// one is full JetStream refuses the publish and the producer gets an error
// (see IsStreamFull) instead of an older message vanishing. RESULTS,
// APPROVALS, EVENTS and DEAD are DiscardOld: they are records kept for a
// while for readers, already dropped oldest-first at their max age; a full
// one drops its oldest records sooner, so a worker can always publish the
// result of the job it just finished.
//
// AUDIT is the exception among the record streams: losing its oldest
// record would break the chains the records form (see AuditLog), so it is
// DiscardNew as well, and DenyDelete and DenyPurge, which JetStream never
// lets a stream update take back. Records leave it only at AuditMaxAge. It
// holds the jobs' chains on AuditWildcard and the policy chain on
// PolicyAuditSubject.
//
// SCHEDULES holds the schedules (see Schedules) and their last firings,
// which JOBS sources: it keeps one message per subject, and is DiscardOld
// because the server allows message schedules on no other kind.
func (cfg Config) StreamConfigs() []jetstream.StreamConfig {
	cfg = cfg.WithDefaults()
	base := func(name, subject, what string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: "jetpilot " + what,
			Subjects:    []string{subject},
			Storage:     cfg.Storage,
			Replicas:    cfg.Replicas,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
		}
	}
	// The duplicate window may not exceed a stream's max age.
	window := func(maxAge time.Duration) time.Duration { return min(cfg.DuplicateWindow, maxAge) }

	jobs := base(cfg.JobsStream(), cfg.JobsWildcard(), "spawn jobs; Nats-Msg-Id = job id")
	jobs.Retention = jetstream.WorkQueuePolicy
	jobs.Duplicates = cfg.JobsDuplicateWindow
	jobs.MaxBytes = cfg.JobsMaxBytes
	jobs.Discard = jetstream.DiscardNew
	jobs.Sources = []*jetstream.StreamSource{cfg.schedulesSource()}
	// Direct gets: JOBS is a work queue the workers' consumer covers, so
	// listing queued jobs (Lister) reads them by sequence, not with a
	// consumer; direct gets are answered without the JetStream API's
	// leader round trip.
	jobs.AllowDirect = true

	results := base(cfg.ResultsStream(), cfg.ResultsWildcard(), "final and paused results; Nats-Msg-Id = <job_id>:<phase>")
	results.MaxAge = cfg.ResultsMaxAge
	results.Duplicates = window(cfg.ResultsMaxAge)
	results.MaxBytes = cfg.ResultsMaxBytes

	approvals := base(cfg.ApprovalsStream(), cfg.ApprovalsWildcard(), "approval requests; Nats-Msg-Id = approval id")
	approvals.MaxAge = cfg.ApprovalsMaxAge
	approvals.Duplicates = window(cfg.ApprovalsMaxAge)
	approvals.MaxBytes = cfg.ApprovalsMaxBytes

	decisions := base(cfg.DecisionsStream(), cfg.DecisionsWildcard(), "answers to approval requests")
	decisions.Retention = jetstream.WorkQueuePolicy
	// A decision nobody consumes is stale once its approval has expired.
	decisions.MaxAge = cfg.ApprovalsMaxAge
	decisions.Duplicates = window(cfg.ApprovalsMaxAge)
	decisions.MaxBytes = cfg.DecisionsMaxBytes
	decisions.Discard = jetstream.DiscardNew

	control := base(cfg.ControlStream(), cfg.ControlWildcard(), "workers' control messages: approval expiry timers, cancels of paused jobs; Nats-Msg-Id = <kind>:<approval_id>")
	control.Retention = jetstream.WorkQueuePolicy
	// An expiry timer is pending until its approval expires, which is
	// never later than ApprovalsMaxAge; a copy published again after a lost
	// ack must be dropped, however late.
	control.MaxAge = cfg.ApprovalsMaxAge
	control.Duplicates = window(cfg.ApprovalsMaxAge)
	control.MaxBytes = cfg.ControlMaxBytes
	control.Discard = jetstream.DiscardNew

	events := base(cfg.EventsStream(), cfg.EventsWildcard(), "live progress events")
	events.MaxAge = cfg.EventsMaxAge
	events.MaxBytes = cfg.EventsMaxBytes

	dead := base(cfg.DeadStream(), cfg.DeadWildcard(), "dead letters: the job as received and why it died")
	dead.MaxAge = cfg.DeadMaxAge
	dead.Duplicates = window(cfg.DeadMaxAge)
	dead.MaxBytes = cfg.DeadMaxBytes

	audit := base(cfg.AuditStream(), cfg.AuditWildcard(), "audit records: approvals, human decisions applied or refused, expiries, cancels, policy changes; "+
		"hash-chained per job; Nats-Msg-Id = <job_id>:<seq>")
	audit.Subjects = append(audit.Subjects, cfg.PolicyAuditSubject())
	audit.MaxAge = cfg.AuditMaxAge
	audit.Duplicates = window(cfg.AuditMaxAge)
	audit.MaxBytes = cfg.AuditMaxBytes
	audit.Discard = jetstream.DiscardNew
	audit.DenyDelete = true
	audit.DenyPurge = true

	schedules := base(cfg.SchedulesStream(), cfg.SchedulesWildcard(), "schedules: a job template per schedule on <prefix>.schedules.<name>, "+
		"its last firing per profile on <prefix>.schedules.<name>.<profile>, which JOBS sources")
	schedules.AllowMsgSchedules = true
	// The server requires roll-ups with schedules (a definition replaces
	// the one before it); set here so an update does not differ.
	schedules.AllowRollup = true
	schedules.MaxMsgsPerSubject = 1
	schedules.MaxBytes = cfg.SchedulesMaxBytes

	return []jetstream.StreamConfig{jobs, results, approvals, decisions, events, dead, control, audit, schedules}
}

// RunsBucketConfig is the KV bucket of runs: one value per job (history 1).
func (cfg Config) RunsBucketConfig() jetstream.KeyValueConfig {
	cfg = cfg.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      cfg.RunsBucket(),
		Description: "jetpilot runs: job id -> session, run, event cursor, state, owner",
		History:     1,
		// Settled records are written with a per-message TTL (the results
		// retention); the markers of expired keys are kept this long.
		LimitMarkerTTL: time.Hour,
		Storage:        cfg.Storage,
		Replicas:       cfg.Replicas,
	}
}

// Setup creates or updates the nine streams and the runs and policy KV
// buckets. It is idempotent: running it again is harmless and applies
// changed limits (max ages, max bytes, discard policies, windows, replicas),
// and adds to an existing JOBS its source of schedule firings.
// Changing a stream's retention is refused by JetStream and reported. The
// policy stored in the policy bucket is left as it is.
//
// On a NATS server without cron message schedules (SchedulesSupported),
// Setup sets up everything else, without SCHEDULES and without JOBS's
// source, and then returns an error wrapping ErrSchedulesUnsupported.
func Setup(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	schedErr := SchedulesSupported(js.Conn())
	for _, sc := range cfg.setupOrder() {
		if schedErr != nil && sc.Name == cfg.SchedulesStream() {
			continue
		}
		if sc.Name == cfg.JobsStream() {
			var err error
			if sc.Sources, err = cfg.jobsSources(ctx, js, schedErr == nil); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
		}
		s, err := js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return fmt.Errorf("setup: create or update stream %s: %w", sc.Name, err)
		}
		if sc.AllowMsgSchedules && !s.CachedInfo().Config.AllowMsgSchedules {
			// A server that does not know the setting ignores it.
			schedErr = fmt.Errorf("%w: the server created stream %s without them", ErrSchedulesUnsupported, sc.Name)
		}
	}
	for _, kvc := range []jetstream.KeyValueConfig{cfg.RunsBucketConfig(), cfg.PolicyBucketConfig(), cfg.KeysBucketConfig()} {
		if _, err := js.CreateOrUpdateKeyValue(ctx, kvc); err != nil {
			return fmt.Errorf("setup: create or update KV bucket %s: %w", kvc.Bucket, err)
		}
	}
	if schedErr != nil {
		return fmt.Errorf("setup: every stream but %s is set up, and schedules are not available: %w", cfg.SchedulesStream(), schedErr)
	}
	return nil
}

// setupOrder is StreamConfigs with SCHEDULES first: JOBS's source starts
// after SCHEDULES' last message (see jobsSources).
func (cfg Config) setupOrder() []jetstream.StreamConfig {
	scs := cfg.StreamConfigs()
	last := len(scs) - 1
	return append([]jetstream.StreamConfig{scs[last]}, scs[:last]...)
}

// jobsSources is what JOBS sources: nothing without schedules; else the
// firings of SCHEDULES, as JOBS already has that source (changing it would
// make the server source again from where it starts), or, for a JOBS that
// does not have it yet, starting after SCHEDULES' last message: the last
// firings SCHEDULES keeps were sourced (and run) by a JOBS deleted since,
// or never were meant for this one.
func (cfg Config) jobsSources(ctx context.Context, js jetstream.JetStream, schedules bool) ([]*jetstream.StreamSource, error) {
	if !schedules {
		return nil, nil
	}
	if jobs, err := js.Stream(ctx, cfg.JobsStream()); err == nil {
		for _, src := range jobs.CachedInfo().Config.Sources {
			if cfg.isSchedulesSource(src) {
				return []*jetstream.StreamSource{src}, nil
			}
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("read stream %s: %w", cfg.JobsStream(), err)
	}
	src := cfg.schedulesSource()
	st, err := js.Stream(ctx, cfg.SchedulesStream())
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("read stream %s: %w", cfg.SchedulesStream(), err)
	case st.CachedInfo().State.LastSeq > 0:
		src.OptStartSeq = st.CachedInfo().State.LastSeq + 1
	}
	return []*jetstream.StreamSource{src}, nil
}

// EnsureStreams creates the streams and the runs and policy buckets that do
// not exist yet, and leaves the ones that do as they are: what a worker does
// at start, so that it never puts back the defaults over limits an operator
// set with `jetpilot setup`. (So an existing JOBS gets its source of
// schedule firings from `jetpilot setup` only.) On a server without
// schedules it leaves SCHEDULES out.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("ensure streams: %w", err)
	}
	schedules := SchedulesSupported(js.Conn()) == nil
	for _, sc := range cfg.setupOrder() {
		if !schedules && sc.Name == cfg.SchedulesStream() {
			continue
		}
		_, err := js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if sc.Name == cfg.JobsStream() {
				if sc.Sources, err = cfg.jobsSources(ctx, js, schedules); err != nil {
					return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
				}
			}
			_, err = js.CreateStream(ctx, sc)
		}
		if err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	kvc := cfg.RunsBucketConfig()
	_, err := js.KeyValue(ctx, kvc.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		_, err = js.CreateKeyValue(ctx, kvc)
	}
	if err != nil {
		return fmt.Errorf("ensure KV bucket %s: %w", kvc.Bucket, err)
	}
	if err := EnsureKeysBucket(ctx, js, cfg); err != nil {
		return err
	}
	return EnsurePolicyBucket(ctx, js, cfg)
}

// WorkerConsumerConfig is the consumer config of the catch-all worker
// consumer (no profile) or of one profile's consumer.
func (cfg Config) WorkerConsumerConfig(profile string) jetstream.ConsumerConfig {
	cfg = cfg.WithDefaults()
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.WorkersDurable(),
		Description:   "jetpilot workers (all profiles)",
		FilterSubject: cfg.JobsWildcard(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       cfg.AckWait,
		// Unlimited: the worker dead-letters after cfg.MaxDeliver deliveries
		// itself (see Config.MaxDeliver); JetStream must never drop a job
		// silently.
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
	}
	if profile != "" {
		cc.Durable = cfg.ProfileWorkersDurable(profile)
		cc.Description = "jetpilot workers (profile " + profile + ")"
		cc.FilterSubject = cfg.JobSubject(profile)
	}
	return cc
}

// EnsureWorkerConsumer creates or updates the durable pull consumers
// workers fetch jobs from. With no profiles it is the catch-all
// "<prefix>-workers" on "<prefix>.jobs.>"; with profiles, one
// "<prefix>-workers-<profile>" on "<prefix>.jobs.<profile>" each, returned
// in the order given. JOBS is a work queue, so the two kinds cannot coexist:
// that conflict is returned as ErrConsumerConflict with what to do about it.
func (cfg Config) EnsureWorkerConsumer(ctx context.Context, js jetstream.JetStream, profiles []string) ([]jetstream.Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ensure worker consumer: %w", err)
	}
	seen := make(map[string]bool, len(profiles))
	var uniq []string
	for _, p := range profiles {
		if err := ValidateProfile(p); err != nil {
			return nil, fmt.Errorf("ensure worker consumer: %w", err)
		}
		if !seen[p] {
			seen[p] = true
			uniq = append(uniq, p)
		}
	}
	if len(uniq) == 0 {
		uniq = []string{""}
	}
	stream := cfg.JobsStream()
	out := make([]jetstream.Consumer, 0, len(uniq))
	for _, p := range uniq {
		cc := cfg.WorkerConsumerConfig(p)
		c, err := js.CreateOrUpdateConsumer(ctx, stream, cc)
		if err != nil {
			if isWorkQueueOverlap(err) {
				return nil, cfg.overlapError(ctx, js, p, err)
			}
			return nil, fmt.Errorf("ensure worker consumer %s on stream %s: %w", cc.Durable, stream, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// ErrConsumerConflict is wrapped by the error EnsureWorkerConsumer returns
// when catch-all and per-profile worker consumers would overlap on the
// work-queue JOBS stream.
var ErrConsumerConflict = errors.New("worker consumers overlap on the jobs work queue")

// JetStream error codes for overlapping consumers on a work-queue stream.
const (
	errCodeWQMultipleUnfiltered = 10099
	errCodeWQNotUnique          = 10100
)

func isWorkQueueOverlap(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == errCodeWQMultipleUnfiltered || apiErr.ErrorCode == errCodeWQNotUnique
}

func (cfg Config) overlapError(ctx context.Context, js jetstream.JetStream, profile string, cause error) error {
	stream := cfg.JobsStream()
	others := cfg.existingWorkerConsumers(ctx, js)
	if profile != "" {
		return fmt.Errorf("%w: a catch-all worker consumer exists (%s); workers with --profiles cannot share the stream %s with it: "+
			"either run every worker without --profiles, or stop the catch-all workers and delete the consumer (nats consumer rm %s %s) (server said: %v)",
			ErrConsumerConflict, others, stream, stream, cfg.WorkersDurable(), cause)
	}
	return fmt.Errorf("%w: per-profile worker consumers exist (%s); a worker without --profiles cannot share the stream %s with them: "+
		"either give this worker --profiles, or stop the per-profile workers and delete their consumers with nats consumer rm %s <name> (server said: %v)",
		ErrConsumerConflict, others, stream, stream, cause)
}

// existingWorkerConsumers lists the stream's consumers for an error
// message; best effort, bounded by ctx.
func (cfg Config) existingWorkerConsumers(ctx context.Context, js jetstream.JetStream) string {
	s, err := js.Stream(ctx, cfg.JobsStream())
	if err != nil {
		return "names unavailable"
	}
	lister := s.ConsumerNames(ctx)
	var names []string
	for n := range lister.Name() {
		if len(names) < 20 {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "names unavailable"
	}
	return strings.Join(names, ", ")
}

// EnsureDecisionConsumer creates or updates "<prefix>-deciders", the durable
// pull consumer on DECISIONS that workers take approval answers from.
func (cfg Config) EnsureDecisionConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	return cfg.ensureResumers(ctx, js, cfg.DecisionsStream(), cfg.DecisionsWildcard(), cfg.DecidersDurable(),
		"jetpilot deciders: answers to approval requests")
}

// EnsureControlConsumer creates or updates "<prefix>-controllers", the
// durable pull consumer on CONTROL that workers take their own control
// messages from.
func (cfg Config) EnsureControlConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	return cfg.ensureResumers(ctx, js, cfg.ControlStream(), cfg.ControlWildcard(), cfg.ControllersDurable(),
		"jetpilot controllers: approval expiry timers and cancels of paused jobs")
}

// ensureResumers creates or updates a consumer of messages that resume
// paused runs.
func (cfg Config) ensureResumers(ctx context.Context, js jetstream.JetStream, stream, filter, durable, what string) (jetstream.Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", durable, err)
	}
	cfg = cfg.WithDefaults()
	cc := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   what,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		// Unlimited: every paused run keeps one approval-expiry timer
		// pending on CONTROL (redelivered with a delay until it is due),
		// so a limit would stop delivery once that many runs are paused.
		MaxAckPending: -1,
	}
	c, err := js.CreateOrUpdateConsumer(ctx, stream, cc)
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on stream %s: %w", durable, stream, err)
	}
	return c, nil
}

// errCodeStreamStoreFailed is the JetStream error code of a message a
// stream refused to store; a full DiscardNew stream answers with it and the
// description "maximum bytes exceeded" (or "maximum messages exceeded").
const errCodeStreamStoreFailed = 10077

// IsStreamFull reports whether err is JetStream refusing a publish because
// the stream is full: one of the DiscardNew streams (JOBS, DECISIONS,
// CONTROL, AUDIT) has reached its max bytes.
func IsStreamFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeStreamStoreFailed {
		return false
	}
	d := apiErr.Description
	return strings.Contains(d, "maximum bytes exceeded") || strings.Contains(d, "maximum messages exceeded")
}

// ExplainStreamFull wraps err, when it is IsStreamFull, with the name of the
// full stream and what to do; any other error is returned as is.
func ExplainStreamFull(stream string, err error) error {
	if !IsStreamFull(err) {
		return err
	}
	return fmt.Errorf("stream %s is full (its max bytes is reached; nothing was stored): wait for workers to take messages off it, "+
		"or raise the limit with `jetpilot setup`: %w", stream, err)
}
