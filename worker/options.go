package worker

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jetpilot-dev/jetpilot/policy"
)

// ShutdownMode says what a stopping worker does with runs still going when
// the shutdown grace period ends.
type ShutdownMode string

const (
	// ShutdownHandoff leaves the runs going on the agent server and naks their
	// jobs: the next worker to get a job re-attaches to its run from the
	// recorded cursor, so a rolling deploy loses no agent work. The default.
	ShutdownHandoff ShutdownMode = "handoff"
	// ShutdownCancel cancels the runs on the agent server, then naks their
	// jobs; the redelivered job ends as cancelled (a run never starts twice).
	ShutdownCancel ShutdownMode = "cancel"
)

// DefaultStartBudget is how long a job that cannot get its run started is
// retried: long enough for an agent-server restart or deploy, short enough
// that a producer hears back the same hour.
const DefaultStartBudget = 15 * time.Minute

// Options configure a Worker. The zero value of every field is a documented default.
type Options struct {
	// Name identifies this worker in results, logs and the runs bucket.
	// Default: "<hostname>-<pid>".
	Name string
	// Concurrency is how many jobs run at once. Default 8.
	Concurrency int
	// Profiles limits the worker to these profiles' subjects. Default: every profile.
	Profiles []string
	// Policies delivers the fleet's stored policy (the KV bucket
	// jetpilot_policy), which every job and tool call is held to. Until
	// the first delivery, and while the stored one cannot be read, the
	// worker takes no work. nil: no stored policy; Fallback applies.
	Policies PolicyFeed
	// Fallback is the policy while none is stored. Default: the one
	// AllowedTools and MaxTimeout stand for when either is set
	// (policy.FromFlags), else policy.Default(): read-only tools run,
	// every other call waits for a human.
	Fallback *policy.Policy
	// AllowedTools and MaxTimeout are the worker flags' shorthand for a
	// policy (see Fallback): these tools run unattended and every other
	// call is refused; job timeouts are capped at MaxTimeout (default
	// policy.DefaultMaxTimeout).
	AllowedTools []string
	MaxTimeout   time.Duration
	// MaxDeliver is how many deliveries a job gets before it is failed and
	// dead-lettered for a failure that is not the agent server's (agent
	// outages are bounded by StartBudget and the job's deadline instead).
	// Default 5.
	MaxDeliver int
	// StartBudget is how long a job whose run cannot be started (agent
	// server down, failing, or refusing the token) is retried, counted from
	// its first failed start, before it is failed and dead-lettered.
	// Default DefaultStartBudget.
	StartBudget time.Duration
	// RetryInitial and RetryMax bound the exponential NakWithDelay backoff for
	// transient failures before a run starts. Defaults 1s and 1m.
	RetryInitial, RetryMax time.Duration
	// Heartbeat is how often InProgress is sent for a running job. It must be
	// well under the consumer's AckWait. Default: AckWait/3 as the queue config says.
	Heartbeat time.Duration
	// ShutdownGrace is how long running sessions may go on after shutdown
	// begins. Default 30s.
	ShutdownGrace time.Duration
	// ShutdownMode is what happens to runs still going after the grace period.
	// Default ShutdownHandoff.
	ShutdownMode ShutdownMode
	// ApprovalTimeout is how long a paused run waits for a decision before
	// OnApprovalExpiry applies. Default 1h.
	ApprovalTimeout time.Duration
	// OnApprovalExpiry is what happens when an approval expires undecided.
	// Default ExpireReject.
	OnApprovalExpiry ExpiryAction
	// MaxOutputBytes caps the agent text a result carries: a NATS message
	// has a size limit (1 MiB by default), and a result that cannot be
	// published would be redelivered forever. Longer text keeps its end,
	// where the agent's conclusion is, and the result says so in a warning.
	// Default 256 KiB.
	MaxOutputBytes int
	// FetchWait is how long one pull request waits for jobs. Default 5s.
	FetchWait time.Duration
	// Logger receives the worker's logs. Default slog.Default().
	Logger *slog.Logger
	// Metrics receives the worker's metrics. Default: a fresh set registered nowhere.
	Metrics *Metrics

	fallback *policy.Policy // Fallback, or the one its defaults stand for
}

func (o Options) withDefaults(ackWait time.Duration) (Options, error) {
	if o.Name == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		o.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if o.Concurrency == 0 {
		o.Concurrency = 8
	}
	if o.Concurrency < 0 {
		return o, fmt.Errorf("concurrency must be at least 1, got %d", o.Concurrency)
	}
	switch {
	case o.Fallback != nil:
		o.fallback = o.Fallback
	case len(o.AllowedTools) > 0 || o.MaxTimeout != 0:
		p, err := policy.FromFlags(o.AllowedTools, o.MaxTimeout)
		if err != nil {
			return o, err
		}
		o.fallback = p
	default:
		o.fallback = policy.Default()
	}
	if o.MaxDeliver == 0 {
		o.MaxDeliver = 5
	}
	if o.MaxDeliver < 1 {
		return o, fmt.Errorf("max deliver must be at least 1, got %d", o.MaxDeliver)
	}
	if o.StartBudget == 0 {
		o.StartBudget = DefaultStartBudget
	}
	if o.StartBudget < 0 {
		return o, fmt.Errorf("start budget must be positive, got %s", o.StartBudget)
	}
	if o.RetryInitial == 0 {
		o.RetryInitial = time.Second
	}
	if o.RetryMax == 0 {
		o.RetryMax = time.Minute
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = ackWait / 3
	}
	if o.Heartbeat <= 0 || (ackWait > 0 && o.Heartbeat >= ackWait) {
		return o, fmt.Errorf("heartbeat %s must be positive and shorter than the consumer's AckWait %s", o.Heartbeat, ackWait)
	}
	if o.ShutdownGrace == 0 {
		o.ShutdownGrace = 30 * time.Second
	}
	switch o.ShutdownMode {
	case "":
		o.ShutdownMode = ShutdownHandoff
	case ShutdownHandoff, ShutdownCancel:
	default:
		return o, fmt.Errorf("shutdown mode must be %q or %q, got %q", ShutdownHandoff, ShutdownCancel, o.ShutdownMode)
	}
	if o.ApprovalTimeout == 0 {
		o.ApprovalTimeout = time.Hour
	}
	switch o.OnApprovalExpiry {
	case "":
		o.OnApprovalExpiry = ExpireReject
	case ExpireReject, ExpireCancel:
	default:
		return o, fmt.Errorf("approval expiry action must be %q or %q, got %q", ExpireReject, ExpireCancel, o.OnApprovalExpiry)
	}
	if o.MaxOutputBytes == 0 {
		o.MaxOutputBytes = 256 << 10
	}
	if o.MaxOutputBytes < 0 {
		return o, fmt.Errorf("max output bytes must be positive, got %d", o.MaxOutputBytes)
	}
	if o.FetchWait == 0 {
		o.FetchWait = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	return o, nil
}
