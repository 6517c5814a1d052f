package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func newSetupCmd(g *globalFlags) *cobra.Command {
	limits := &setupLimits{}
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Create or update the streams and the runs and policy buckets (idempotent)",
		Long: `Creates or updates the streams and the runs and policy KV buckets (the
stored policy itself is left as it is), applying the limits
given (every run applies them again: a limit not given goes back to its
default), and prints every limit the server now holds, the replicas, and the
servers' fsync mode where this NATS user can see it.

Sizes take a unit (KiB, MiB, GiB, TiB, or KB, MB, GB, TB), or -1 for
unlimited. JOBS, DECISIONS and CONTROL refuse new messages when full, so a
producer gets an error; so does AUDIT, which also denies deleting and
purging records (for good: JetStream lets no update take that back), and
while it is full no human decision is applied (approvals fail closed). The
other streams drop their oldest messages. SCHEDULES (jetpilot schedule) needs
nats-server 2.14 or later: on an older one, everything else is set up and a
warning says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := limits.apply(g.queueConfig())
			if err := cfg.Validate(); err != nil {
				return usageError("setup: %w", err)
			}
			out := cmd.OutOrStdout()
			err := withConn(cmd, g, "jetpilot setup", func(ctx context.Context, _ *slog.Logger, nc *nats.Conn, js jetstream.JetStream) error {
				serr := queue.Setup(ctx, js, cfg)
				if serr != nil && !errors.Is(serr, queue.ErrSchedulesUnsupported) {
					return serr
				}
				if err := reportSetup(ctx, out, nc, js, cfg); err != nil {
					return err
				}
				if serr != nil {
					// Everything else works: a warning, not a failure.
					fmt.Fprintf(out, "warning: %v; `jetpilot schedule` needs nats-server %s or later, then run `jetpilot setup` again\n", serr, queue.MinSchedulesServer)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			return nil
		},
	}
	limits.register(cmd.Flags())
	return cmd
}

// setupLimits are setup's storage limit flags.
type setupLimits struct {
	jobs, results, approvals, decisions, control, events, dead, audit, schedules byteSize
}

func (l *setupLimits) register(fs *pflag.FlagSet) {
	for _, f := range []struct {
		v      *byteSize
		name   string
		def    int64
		stream string
		full   string
	}{
		{&l.jobs, "jobs-max-bytes", queue.DefaultJobsMaxBytes, "JOBS", "refuses new jobs"},
		{&l.results, "results-max-bytes", queue.DefaultResultsMaxBytes, "RESULTS", "drops the oldest"},
		{&l.approvals, "approvals-max-bytes", queue.DefaultApprovalsMaxBytes, "APPROVALS", "drops the oldest"},
		{&l.decisions, "decisions-max-bytes", queue.DefaultDecisionsMaxBytes, "DECISIONS", "refuses new decisions"},
		{&l.control, "control-max-bytes", queue.DefaultControlMaxBytes, "CONTROL", "refuses new control messages"},
		{&l.events, "events-max-bytes", queue.DefaultEventsMaxBytes, "EVENTS", "drops the oldest"},
		{&l.dead, "dead-max-bytes", queue.DefaultDeadMaxBytes, "DEAD", "drops the oldest"},
		{&l.audit, "audit-max-bytes", queue.DefaultAuditMaxBytes, "AUDIT", "refuses new records, and approvals fail closed"},
		{&l.schedules, "schedules-max-bytes", queue.DefaultSchedulesMaxBytes, "SCHEDULES", "drops the oldest (schedule add refuses to fill it)"},
	} {
		*f.v = byteSize(f.def)
		fs.Var(f.v, f.name, fmt.Sprintf("max bytes of the %s stream; when full it %s (-1: unlimited)", f.stream, f.full))
	}
}

func (l *setupLimits) apply(cfg queue.Config) queue.Config {
	cfg.JobsMaxBytes = int64(l.jobs)
	cfg.ResultsMaxBytes = int64(l.results)
	cfg.ApprovalsMaxBytes = int64(l.approvals)
	cfg.DecisionsMaxBytes = int64(l.decisions)
	cfg.ControlMaxBytes = int64(l.control)
	cfg.EventsMaxBytes = int64(l.events)
	cfg.DeadMaxBytes = int64(l.dead)
	cfg.AuditMaxBytes = int64(l.audit)
	cfg.SchedulesMaxBytes = int64(l.schedules)
	return cfg
}

// byteSize is a size flag: "1GiB", "256MiB", "500MB", "1048576", or -1.
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

func parseByteSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	if t == "-1" || t == "UNLIMITED" {
		return queue.UnlimitedBytes, nil
	}
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive whole number with an optional unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB), or -1 for unlimited", s)
	}
	return n * mult, nil
}

func (b *byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

func (b *byteSize) String() string { return formatBytes(int64(*b)) }
func (b *byteSize) Type() string   { return "size" }

// formatBytes shows a size in the largest binary unit that divides it.
func formatBytes(n int64) string {
	if n < 0 {
		return "unlimited"
	}
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

func formatAge(d time.Duration) string {
	if d <= 0 {
		return "none"
	}
	return d.String()
}

// reportSetup prints every limit the server now holds for each stream and
// the bucket, read back from the server, then the durability: replicas and
// fsync mode.
func reportSetup(ctx context.Context, out io.Writer, nc *nats.Conn, js jetstream.JetStream, cfg queue.Config) error {
	replicas := 0
	for _, want := range cfg.StreamConfigs() {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) && want.Name == cfg.SchedulesStream() {
			continue // a server without schedules: Setup said so
		}
		if err != nil {
			return fmt.Errorf("read back stream %s: %w", want.Name, err)
		}
		sc := s.CachedInfo().Config
		fmt.Fprintf(out, "stream %s ready: %s\n", sc.Name, describeStream(sc))
		replicas = sc.Replicas
	}
	for _, bucket := range []string{cfg.RunsBucket(), cfg.PolicyBucket()} {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			return fmt.Errorf("read back KV bucket %s: %w", bucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return fmt.Errorf("read back KV bucket %s: %w", bucket, err)
		}
		fmt.Fprintf(out, "kv bucket %s ready: %s\n", st.Bucket(), describeBucket(st))
	}

	if replicas < 3 {
		fmt.Fprintf(out, "warning: replicas %d: a lost disk or server loses the streams; in production run a 3-node cluster and `jetpilot setup --replicas 3`\n", replicas)
	}
	fmt.Fprintln(out, describeSync(serverSync(ctx, nc)))
	return nil
}

func describeStream(sc jetstream.StreamConfig) string {
	retention := "limits"
	switch sc.Retention {
	case jetstream.WorkQueuePolicy:
		retention = "work queue"
	case jetstream.InterestPolicy:
		retention = "interest"
	}
	discard := "old"
	if sc.Discard == jetstream.DiscardNew {
		discard = "new (a full stream refuses publishes)"
	}
	s := fmt.Sprintf("%s, %s storage, max age %s, max bytes %s, discard %s, replicas %d, duplicate window %s",
		retention, strings.ToLower(sc.Storage.String()), formatAge(sc.MaxAge), formatBytes(sc.MaxBytes), discard, sc.Replicas, formatAge(sc.Duplicates))
	if sc.DenyDelete {
		s += ", deny delete"
	}
	if sc.DenyPurge {
		s += ", deny purge"
	}
	if sc.AllowMsgSchedules {
		s += fmt.Sprintf(", message schedules, %d message per subject", sc.MaxMsgsPerSubject)
	}
	for _, src := range sc.Sources {
		s += ", sources " + src.Name
	}
	return s
}

func describeBucket(st jetstream.KeyValueStatus) string {
	s := fmt.Sprintf("history %d, ttl %s", st.History(), formatAge(st.TTL()))
	if info, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		sc := info.StreamInfo().Config
		s += fmt.Sprintf(", max bytes %s, %s storage, replicas %d", formatBytes(sc.MaxBytes), strings.ToLower(sc.Storage.String()), sc.Replicas)
		if sc.AllowMsgTTL {
			s += ", per-record ttl allowed"
		}
		if m := info.LimitMarkerTTL(); m > 0 {
			s += ", limit marker ttl " + m.String()
		}
	}
	return s
}

// serverFsync is one server's JetStream fsync setting.
type serverFsync struct {
	Server   string
	Always   bool
	Interval time.Duration
}

// syncReport is what the servers said about fsync, or why they could not.
type syncReport struct {
	servers []serverFsync
	unknown string // why the setting could not be read; "" when servers is set
}

// varzReply is the part of a $SYS VARZ answer that holds the fsync mode.
type varzReply struct {
	Server struct {
		Name string `json:"name"`
	} `json:"server"`
	Data struct {
		JetStream struct {
			Config *struct {
				SyncInterval time.Duration `json:"sync_interval"`
				SyncAlways   bool          `json:"sync_always"`
			} `json:"config"`
		} `json:"jetstream"`
	} `json:"data"`
	Error *struct {
		Description string `json:"description"`
	} `json:"error"`
}

// varzSubject asks every server of the cluster for its VARZ; only a user of
// the system account may: the JetStream API itself does not report fsync.
const varzSubject = "$SYS.REQ.SERVER.PING.VARZ"

// serverSync asks the servers for their fsync setting (bounded: at most 2s
// for the first answer, then 500ms for the others, and 64 answers).
func serverSync(ctx context.Context, nc *nats.Conn) syncReport {
	notVisible := func(why string) syncReport {
		return syncReport{unknown: "not visible to this NATS user (" + why + "; the JetStream API does not report it, a system-account user can read it from VARZ)"}
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return notVisible("subscribe: " + err.Error())
	}
	defer func() { _ = sub.Unsubscribe() }()
	// With a header, the request goes out as HPUB, for which the server
	// answers "no responders" at once rather than leaving us to time out.
	req := &nats.Msg{Subject: varzSubject, Reply: inbox, Header: nats.Header{"Jetpilot": []string{"setup"}}}
	if err := nc.PublishMsg(req); err != nil {
		return notVisible("request: " + err.Error())
	}
	var rep syncReport
	wait := 2 * time.Second
	for range 64 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err != nil {
			break
		}
		if msg.Header.Get("Status") == "503" {
			return notVisible("no server answered " + varzSubject)
		}
		var v varzReply
		if json.Unmarshal(msg.Data, &v) != nil || v.Error != nil || v.Data.JetStream.Config == nil {
			continue
		}
		c := v.Data.JetStream.Config
		interval := c.SyncInterval
		if interval == 0 {
			interval = queue.NatsDefaultSyncInterval
		}
		rep.servers = append(rep.servers, serverFsync{Server: v.Server.Name, Always: c.SyncAlways, Interval: interval})
		wait = 500 * time.Millisecond
	}
	if len(rep.servers) == 0 {
		return notVisible("no answer to " + varzSubject)
	}
	return rep
}

// describeSync is setup's fsync line: the mode of every server that
// answered, a warning about any lazy one, or that it cannot be seen.
func describeSync(r syncReport) string {
	const lazyRisk = "acknowledged writes can be lost on power failure; set `sync_interval: always` in every nats-server's jetstream block"
	if len(r.servers) == 0 {
		return "fsync: " + r.unknown + "; unless every nats-server has `sync_interval: always`, " +
			"it fsyncs every " + queue.NatsDefaultSyncInterval.String() + " and acknowledged writes can be lost on power failure"
	}
	var b strings.Builder
	var lazy []string
	for i, s := range r.servers {
		if i > 0 {
			b.WriteString(", ")
		}
		name := s.Server
		if name == "" {
			name = "(unnamed)"
		}
		if s.Always {
			fmt.Fprintf(&b, "%s always", name)
		} else {
			fmt.Fprintf(&b, "%s every %s", name, s.Interval)
			lazy = append(lazy, name)
		}
	}
	line := "fsync: " + b.String()
	if len(lazy) > 0 {
		line += "\nwarning: lazy fsync on " + strings.Join(lazy, ", ") + ": " + lazyRisk
	}
	return line
}
