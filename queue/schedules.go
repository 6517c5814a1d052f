package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Schedules are JetStream message schedules (ADR-51; cron needs
// nats-server 2.14 or later): no timer of jetpilot's own fires anything.
//
// A schedule is one message on "<prefix>.schedules.<name>" in the
// SCHEDULES stream: its body is the job template (a job without an id), its
// headers the cron pattern (Nats-Schedule), the time zone
// (Nats-Schedule-Time-Zone) and where the server puts each firing
// (Nats-Schedule-Target): "<prefix>.schedules.<name>.<profile>", a subject
// of the same stream, as the server requires. At every firing the server
// stores a copy of the body there, with Nats-Scheduler naming the schedule's
// subject and Nats-Schedule-Next the next firing, and without the
// schedule's own headers and any Nats-Msg-Id. JOBS sources the firings only
// (the filter "<prefix>.schedules.*.*" has one token more than a
// definition's subject), transformed to "<prefix>.jobs.<profile>", and a
// worker names each firing's job (Config.FiringOf).
//
// SCHEDULES keeps one message per subject: a schedule's definition and the
// last firing per profile. A firing that JOBS has not sourced yet when the
// next one comes (JOBS full or unreachable for a whole period) is replaced
// by it: missed firings collapse into one, as the server itself does when
// it was down at a firing's time. The server refuses schedules on a
// DiscardNew stream, so a full SCHEDULES would drop its oldest messages,
// which may be definitions: Schedules.Add refuses a schedule that would
// fill it.

// Headers of JetStream message schedules, and the one a sourced message
// carries.
const (
	HeaderSchedule         = "Nats-Schedule"
	HeaderScheduleTarget   = "Nats-Schedule-Target"
	HeaderScheduleTimeZone = "Nats-Schedule-Time-Zone"
	HeaderScheduler        = "Nats-Scheduler"
	HeaderScheduleNext     = "Nats-Schedule-Next"
	HeaderStreamSource     = "Nats-Stream-Source"
)

// ScheduleMetadataKey is the metadata key that names, on a job a schedule
// fired (and so on its results, approvals, events and dead letters), the
// schedule, so results can be grouped by it.
const ScheduleMetadataKey = "jetpilot.schedule"

// MaxScheduleNameLen is the longest schedule name. The name ends the
// firings' job ids, "<name>:<RFC 3339 second>" (21 characters more), which
// must fit the 128 of a job id.
const MaxScheduleNameLen = 64

// MinSchedulesServer is the oldest nats-server version with cron schedules.
const MinSchedulesServer = "2.14.0"

var (
	// ErrSchedulesUnsupported is wrapped by errors about a NATS server
	// without cron message schedules (older than MinSchedulesServer).
	ErrSchedulesUnsupported = errors.New("the NATS server has no cron message schedules (nats-server " + MinSchedulesServer + " or later is needed)")
	// ErrScheduleNotFound is returned for a schedule name that has no
	// definition.
	ErrScheduleNotFound = errors.New("schedule not found")
	// ErrScheduleExists is returned by Add for a name already in use.
	ErrScheduleExists = errors.New("schedule already exists")
)

// ValidateScheduleName checks a schedule name: 1-64 letters, digits, '_' or
// '-', the characters allowed both in one NATS subject token and in a job
// id; not '.' (it would split the subject) nor ':' (it ends the name in a
// firing's job id).
func ValidateScheduleName(name string) error {
	if err := schemas.CheckName(name, MaxScheduleNameLen); err != nil {
		return fmt.Errorf("schedule name %q: %w", name, err)
	}
	return nil
}

// SchedulesStream is "<PREFIX>_SCHEDULES".
func (cfg Config) SchedulesStream() string { return cfg.streamName("SCHEDULES") }

// SchedulesWildcard is "<prefix>.schedules.>": definitions and firings.
func (cfg Config) SchedulesWildcard() string { return cfg.subject("schedules", ">") }

// ScheduleSubject is "<prefix>.schedules.<name>", the schedule's definition.
func (cfg Config) ScheduleSubject(name string) string { return cfg.subject("schedules", name) }

// ScheduleFireSubject is "<prefix>.schedules.<name>.<profile>", where the
// server stores the schedule's firings (its Nats-Schedule-Target).
func (cfg Config) ScheduleFireSubject(name, profile string) string {
	return cfg.subject("schedules", name+"."+profile)
}

// schedulesSource is the JOBS stream's source of firings: every
// "<prefix>.schedules.<name>.<profile>" (never a definition, one token
// shorter) as "<prefix>.jobs.<profile>".
func (cfg Config) schedulesSource() *jetstream.StreamSource {
	return &jetstream.StreamSource{
		Name: cfg.SchedulesStream(),
		SubjectTransforms: []jetstream.SubjectTransformConfig{{
			Source:      cfg.subject("schedules", "*.*"),
			Destination: cfg.subject("jobs", "{{wildcard(2)}}"),
		}},
	}
}

// isSchedulesSource reports whether src is schedulesSource (whatever its
// start sequence).
func (cfg Config) isSchedulesSource(src *jetstream.StreamSource) bool {
	want := cfg.schedulesSource()
	return src != nil && src.Name == want.Name && src.FilterSubject == "" && src.External == nil &&
		slices.Equal(src.SubjectTransforms, want.SubjectTransforms)
}

// SchedulesSupported reports, from the version of the server nc is
// connected to, whether it has cron message schedules: nil, or an error
// wrapping ErrSchedulesUnsupported that names the version. An unknown
// version is taken as supported; the stream's AllowMsgSchedules, read back
// after it is created, decides then.
func SchedulesSupported(nc *nats.Conn) error {
	if nc == nil {
		return nil
	}
	v := nc.ConnectedServerVersion()
	if v == "" || !versionBefore(v, MinSchedulesServer) {
		return nil
	}
	return fmt.Errorf("%w: connected to nats-server %s", ErrSchedulesUnsupported, v)
}

// versionBefore reports whether version v ("2.11.3", "v2.14.0-RC.1") is
// older than min ("2.14.0"), comparing major, minor and patch. A version it
// cannot read is not older.
func versionBefore(v, min string) bool {
	parse := func(s string) ([3]int, bool) {
		var out [3]int
		s = strings.TrimPrefix(s, "v")
		s, _, _ = strings.Cut(s, "-")
		parts := strings.Split(s, ".")
		if len(parts) != 3 {
			return out, false
		}
		for i, p := range parts {
			n, err := strconv.Atoi(p)
			if err != nil {
				return out, false
			}
			out[i] = n
		}
		return out, true
	}
	a, ok1 := parse(v)
	b, ok2 := parse(min)
	if !ok1 || !ok2 {
		return false
	}
	return slices.Compare(a[:], b[:]) < 0
}

// Firing is a job message that a schedule fired.
type Firing struct {
	// Schedule is the schedule's name.
	Schedule string
	// JobID is "<name>:<RFC 3339 UTC second>" of the time JOBS stored the
	// message: every delivery of the message carries that time, so a
	// firing delivered twice is one job and runs once.
	JobID string
}

// FiringOf tells whether a job message came from a schedule, from its
// headers and the time JOBS stored it (the message's metadata timestamp).
// ok is false for any other job (no Nats-Scheduler header).
//
// Why the headers can be trusted: nats-server refuses a publish that
// carries Nats-Stream-Source, and one that carries Nats-Scheduler without
// being a schedule purge (which a stream without AllowMsgSchedules, such as
// JOBS, refuses too), so on JOBS both can only come from sourcing. A
// message with Nats-Scheduler counts as a firing only when its
// Nats-Stream-Source names the SCHEDULES stream and a firing subject
// "<prefix>.schedules.<name>.<profile>" of the schedule Nats-Scheduler
// names; anything else is an error (the job is rejected), never a job
// taken at its word. Whoever may publish on "<prefix>.schedules.>" may
// make firings: grant it as you grant schedule add.
//
// The id uses the time JOBS stored the firing, not the time SCHEDULES
// did: sourcing keeps only the origin stream and sequence
// (Nats-Stream-Source: "<stream> <seq> <filter> <destination>
// <subject>"), not its timestamp. Sourcing follows the origin
// sequence, so a firing reaches JOBS once.
func (cfg Config) FiringOf(h nats.Header, stored time.Time) (f Firing, ok bool, err error) {
	scheduler := h.Get(HeaderScheduler)
	if scheduler == "" {
		return Firing{}, false, nil
	}
	fail := func(format string, args ...any) (Firing, bool, error) {
		return Firing{}, true, fmt.Errorf("scheduled job: "+format, args...)
	}
	name, found := strings.CutPrefix(scheduler, cfg.subject("schedules", ""))
	if !found || ValidateScheduleName(name) != nil {
		return fail("%s %q is not a schedule of %s", HeaderScheduler, scheduler, cfg.SchedulesStream())
	}
	src := strings.Fields(h.Get(HeaderStreamSource))
	if len(src) < 5 || src[0] != cfg.SchedulesStream() {
		return fail("it carries %s but was not sourced from %s (%s %q)", HeaderScheduler, cfg.SchedulesStream(), HeaderStreamSource, h.Get(HeaderStreamSource))
	}
	rest, found := strings.CutPrefix(src[4], scheduler+".")
	if !found || schemas.ValidateProfile(rest) != nil {
		return fail("sourced from %s of %s, which is not a firing subject of schedule %s", src[4], cfg.SchedulesStream(), name)
	}
	if stored.IsZero() {
		return fail("the message of schedule %s has no stored time to name the firing by", name)
	}
	return Firing{Schedule: name, JobID: FiringJobID(name, stored)}, true, nil
}

// FiringJobID is the job id of schedule name's firing stored at t:
// "<name>:<t as RFC 3339 UTC, to the second>".
func FiringJobID(name string, t time.Time) string {
	return name + ":" + t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

// Job is the firing's job document: the template as fired, with the
// firing's id added as its first member. A template that has an id of its
// own gets a "duplicate key" rejection, not one of the two silently.
func (f Firing) Job(template []byte) []byte {
	t := bytes.TrimLeft(template, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return template // not an object: the decoder says so
	}
	rest := bytes.TrimLeft(t[1:], " \t\r\n")
	out := make([]byte, 0, len(template)+len(f.JobID)+8)
	out = append(out, `{"id":"`...)
	out = append(out, f.JobID...) // a valid job id needs no escaping
	out = append(out, '"')
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// maxMetadataKeys is the job schema's maxProperties of metadata.
const maxMetadataKeys = 64

// Stamp returns the job's metadata with ScheduleMetadataKey set to the
// schedule's name (a copy; the job's map is not changed), or an error when
// the metadata has no room left for it.
func (f Firing) Stamp(md map[string]string) (map[string]string, error) {
	if _, has := md[ScheduleMetadataKey]; !has && len(md) >= maxMetadataKeys {
		return md, &schemas.ValidationError{Code: "invalid_job", Problems: []schemas.FieldError{{Field: "metadata",
			Reason: fmt.Sprintf("a scheduled job's metadata may have at most %d keys: the worker adds %q", maxMetadataKeys-1, ScheduleMetadataKey)}}}
	}
	out := make(map[string]string, len(md)+1)
	maps.Copy(out, md)
	out[ScheduleMetadataKey] = f.Schedule
	return out, nil
}

// Schedule is a schedule's definition.
type Schedule struct {
	// Name is 1-64 letters, digits, '_' or '-' (ValidateScheduleName).
	Name string
	// Cron is a 6-field cron pattern (seconds first), or one of @yearly,
	// @annually, @monthly, @weekly, @daily, @midnight, @hourly, or
	// "@every <duration>" (at least 1s). See ValidateCron.
	Cron string
	// TimeZone is an IANA zone name the cron pattern is read in; "" is UTC.
	TimeZone string
	// Job is the template of every firing's job: a job without an id (the
	// worker names each firing, see FiringOf).
	Job schemas.Job

	// Set by Get and List.

	// Stored is when the definition was stored.
	Stored time.Time
	// LastFired is when the schedule last fired (for its current profile),
	// zero if it has not yet.
	LastFired time.Time
	// Next is when it fires next: the server's own plan when it has fired
	// before, else computed from the pattern. Zero if unknown.
	Next time.Time
	// Invalid says why the stored job no longer decodes as a job (a
	// definition stored by hand, or by another version); its firings are
	// rejected. Nil for a good one.
	Invalid error
}

// Schedules stores schedules in the SCHEDULES stream.
type Schedules struct {
	js  jetstream.JetStream
	cfg Config
}

// NewSchedules returns the schedule store of cfg's deployment.
func NewSchedules(js jetstream.JetStream, cfg Config) *Schedules {
	return &Schedules{js: js, cfg: cfg.WithDefaults()}
}

// Template is the job document a schedule stores for job: the job encoded
// without its id. The job must have no id.
func Template(job schemas.Job) ([]byte, error) {
	if job.ID != "" {
		return nil, errors.New("a scheduled job has no id of its own: the worker names each firing <schedule>:<time>")
	}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("encode job template: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("encode job template: %w", err)
	}
	delete(doc, "id")
	return json.Marshal(doc)
}

// CheckTemplate validates a schedule's job as its firings will be: with a
// firing's id and the schedule's name in its metadata.
func CheckTemplate(name string, job schemas.Job) ([]byte, error) {
	if _, has := job.Metadata[ScheduleMetadataKey]; has {
		return nil, &schemas.ValidationError{Code: "invalid_job", Problems: []schemas.FieldError{{Field: "metadata/" + ScheduleMetadataKey,
			Reason: "is set by the worker to the schedule's name"}}}
	}
	tmpl, err := Template(job)
	if err != nil {
		return nil, err
	}
	f := Firing{Schedule: name, JobID: FiringJobID(name, time.Now())}
	fired, err := schemas.DecodeJob(f.Job(tmpl))
	if err == nil {
		_, err = f.Stamp(fired.Metadata)
	}
	if err != nil {
		return nil, err
	}
	return tmpl, nil
}

// Add stores a new schedule. It checks everything first: the name, the
// cron pattern and time zone (ValidateCron), the job as its firings will
// be, that SCHEDULES exists with message schedules allowed, that JOBS
// sources it (else nothing would run: `jetpilot setup` adds the source), and
// that SCHEDULES has room. A name in use is ErrScheduleExists: remove it
// first. A pattern the server still refuses is returned with the server's
// reason.
func (s *Schedules) Add(ctx context.Context, sch Schedule) error {
	if err := ValidateScheduleName(sch.Name); err != nil {
		return fmt.Errorf("add schedule: %w", err)
	}
	if _, err := ValidateCron(sch.Cron, sch.TimeZone); err != nil {
		return fmt.Errorf("add schedule %s: %w", sch.Name, err)
	}
	tmpl, err := CheckTemplate(sch.Name, sch.Job)
	if err != nil {
		return fmt.Errorf("add schedule %s: %w", sch.Name, err)
	}
	st, err := s.ready(ctx, int64(len(tmpl)))
	if err != nil {
		return fmt.Errorf("add schedule %s: %w", sch.Name, err)
	}
	return s.publish(ctx, st, sch, tmpl)
}

// publish stores a checked schedule in stream st.
func (s *Schedules) publish(ctx context.Context, st string, sch Schedule, tmpl []byte) error {
	msg := nats.NewMsg(s.cfg.ScheduleSubject(sch.Name))
	msg.Data = tmpl
	msg.Header.Set(HeaderSchedule, sch.Cron)
	msg.Header.Set(HeaderScheduleTarget, s.cfg.ScheduleFireSubject(sch.Name, sch.Job.ProfileOrDefault()))
	if sch.TimeZone != "" {
		msg.Header.Set(HeaderScheduleTimeZone, sch.TimeZone)
	}
	_, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(st), jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return nil
	case IsWrongLastSequence(err):
		return fmt.Errorf("add schedule %s: %w: remove it first (jetpilot schedule rm %s)", sch.Name, ErrScheduleExists, sch.Name)
	case errors.As(err, &apiErr):
		return fmt.Errorf("add schedule %s: the NATS server refused it: %s (error code %d)", sch.Name, apiErr.Description, apiErr.ErrorCode)
	default:
		return fmt.Errorf("add schedule %s: publish to %s: %w", sch.Name, st, err)
	}
}

// ready checks that SCHEDULES can take a definition of size bytes and that
// JOBS sources it; it returns SCHEDULES' name.
func (s *Schedules) ready(ctx context.Context, size int64) (string, error) {
	name := s.cfg.SchedulesStream()
	st, err := s.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return "", fmt.Errorf("stream %s does not exist: run `jetpilot setup` (on nats-server %s or later)", name, MinSchedulesServer)
	}
	if err != nil {
		return "", fmt.Errorf("read stream %s: %w", name, err)
	}
	info := st.CachedInfo()
	if !info.Config.AllowMsgSchedules {
		return "", fmt.Errorf("%w: stream %s does not allow message schedules; upgrade the server and run `jetpilot setup`", ErrSchedulesUnsupported, name)
	}
	// A definition and its last firing: two copies.
	if max := info.Config.MaxBytes; max > 0 && int64(info.State.Bytes)+2*(size+512) > max {
		return "", fmt.Errorf("stream %s is nearly full (%d of %d bytes): a full one drops its oldest messages, which may be schedules; "+
			"remove schedules or raise the limit with `jetpilot setup --schedules-max-bytes`", name, info.State.Bytes, max)
	}
	jobs, err := s.js.Stream(ctx, s.cfg.JobsStream())
	if err != nil {
		return "", fmt.Errorf("read stream %s: %w", s.cfg.JobsStream(), err)
	}
	if !slices.ContainsFunc(jobs.CachedInfo().Config.Sources, s.cfg.isSchedulesSource) {
		return "", fmt.Errorf("stream %s does not source %s, so no firing would reach a worker: run `jetpilot setup`", s.cfg.JobsStream(), name)
	}
	return name, nil
}

// Get reads one schedule.
func (s *Schedules) Get(ctx context.Context, name string) (Schedule, error) {
	if err := ValidateScheduleName(name); err != nil {
		return Schedule{}, fmt.Errorf("get schedule: %w", err)
	}
	st, err := s.js.Stream(ctx, s.cfg.SchedulesStream())
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule %s: read stream %s: %w", name, s.cfg.SchedulesStream(), err)
	}
	return s.get(ctx, st, name)
}

func (s *Schedules) get(ctx context.Context, st jetstream.Stream, name string) (Schedule, error) {
	m, err := st.GetLastMsgForSubject(ctx, s.cfg.ScheduleSubject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Schedule{}, fmt.Errorf("schedule %s: %w", name, ErrScheduleNotFound)
	}
	if err != nil {
		return Schedule{}, fmt.Errorf("get schedule %s: %w", name, err)
	}
	sch := Schedule{Name: name, Cron: m.Header.Get(HeaderSchedule), TimeZone: m.Header.Get(HeaderScheduleTimeZone), Stored: m.Time}
	if sch.Cron == "" {
		return Schedule{}, fmt.Errorf("schedule %s: %w (the message on %s is not a schedule)", name, ErrScheduleNotFound, m.Subject)
	}
	f := Firing{Schedule: name, JobID: FiringJobID(name, m.Time)}
	sch.Job, sch.Invalid = schemas.DecodeJob(f.Job(m.Data))
	sch.Job.ID = ""
	if last, err := st.GetLastMsgForSubject(ctx, s.cfg.ScheduleFireSubject(name, sch.Job.ProfileOrDefault())); err == nil && last.Time.After(m.Time) {
		sch.LastFired = last.Time
		if next, err := time.Parse(time.RFC3339Nano, last.Header.Get(HeaderScheduleNext)); err == nil && next.After(time.Now()) {
			sch.Next = next
		}
	}
	if sch.Next.IsZero() {
		if c, err := ValidateCron(sch.Cron, sch.TimeZone); err == nil {
			sch.Next = c.Next(time.Now())
		}
	}
	return sch, nil
}

// maxListedSchedules bounds List.
const maxListedSchedules = 10_000

// List returns every schedule, by name (at most 10,000).
func (s *Schedules) List(ctx context.Context) ([]Schedule, error) {
	st, err := s.js.Stream(ctx, s.cfg.SchedulesStream())
	if err != nil {
		return nil, fmt.Errorf("list schedules: read stream %s: %w", s.cfg.SchedulesStream(), err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(s.cfg.subject("schedules", "*")))
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	names := make([]string, 0, len(info.State.Subjects))
	prefix := s.cfg.subject("schedules", "")
	for subj := range info.State.Subjects {
		if name, ok := strings.CutPrefix(subj, prefix); ok && ValidateScheduleName(name) == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) > maxListedSchedules {
		names = names[:maxListedSchedules]
	}
	out := make([]Schedule, 0, len(names))
	for _, name := range names {
		sch, err := s.get(ctx, st, name)
		if errors.Is(err, ErrScheduleNotFound) {
			continue // removed meanwhile, or not a schedule
		}
		if err != nil {
			return out, fmt.Errorf("list schedules: %w", err)
		}
		out = append(out, sch)
	}
	return out, nil
}

// Remove deletes a schedule and its last firings: it fires no more. A
// firing already in JOBS still runs.
func (s *Schedules) Remove(ctx context.Context, name string) error {
	if err := ValidateScheduleName(name); err != nil {
		return fmt.Errorf("remove schedule: %w", err)
	}
	st, err := s.js.Stream(ctx, s.cfg.SchedulesStream())
	if err != nil {
		return fmt.Errorf("remove schedule %s: read stream %s: %w", name, s.cfg.SchedulesStream(), err)
	}
	_, err = st.GetLastMsgForSubject(ctx, s.cfg.ScheduleSubject(name))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("remove schedule %s: %w", name, ErrScheduleNotFound)
	}
	if err != nil {
		return fmt.Errorf("remove schedule %s: %w", name, err)
	}
	for _, subj := range []string{s.cfg.ScheduleSubject(name), s.cfg.ScheduleFireSubject(name, "*")} {
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("remove schedule %s: purge %s: %w", name, subj, err)
		}
	}
	return nil
}
