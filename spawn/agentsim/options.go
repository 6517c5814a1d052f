package agentsim

import (
	"log/slog"
	"time"
)

// Options configure a Server. The zero value is usable: every field has a
// documented default. Durations the real server spends in seconds default
// to a few milliseconds here so tests stay fast; each field names the real
// value.
type Options struct {
	// Token is the bearer token protected routes require. Empty means no
	// auth (like --no-auth): any Authorization header, or none, is
	// accepted. SetToken and Restart change it.
	Token string

	// RingSize is how many events each session keeps for Last-Event-ID
	// replay. Default 4096, as the real server. A script can lower it per
	// session with "#sim ring <n>".
	RingSize int

	// SubscriberLag is how many events an open stream may fall behind
	// before it silently loses the oldest of them (its ids jump). Default
	// 2×RingSize (8192), the real broadcast channel's capacity.
	SubscriberLag int

	// KeepAlive is how long an event stream may go without an event
	// before a ": keepalive" comment is written; the timer restarts on
	// every event. Default 15s, as the real server.
	KeepAlive time.Duration

	// IdempotencyTTL is how long Idempotency-Keys are remembered.
	// Default 24h, as the real server.
	IdempotencyTTL time.Duration

	// EventInterval is the pause between a run's events. Default 0: as fast
	// as possible, which is what makes the late-subscriber trap bite.
	EventInterval time.Duration

	// StartDelay is how long a run is `running` before run_started
	// (checkpoint load, sandbox start; seconds on a real server).
	// Default 20ms.
	StartDelay time.Duration

	// EndDelay is how long a run stays `running` after its terminal event
	// (sandbox shutdown, terminal checkpoint; up to ~2 s on a real
	// server). The terminal checkpoint is written at its end. Default
	// 100ms.
	EndDelay time.Duration

	// CheckpointInterval is how often a running run's messages are
	// checkpointed (what GET /messages serves). Default 5s, as the real
	// server.
	CheckpointInterval time.Duration

	// RetryBackoff is the first back-off of a failed simulated inference
	// ("#sim retry", unknown models); it doubles per attempt. The real
	// server waits 2 s, then 4 s. Default 10ms.
	RetryBackoff time.Duration

	// Version is reported by GET /v1/health. Default "0.3.88-sim".
	Version string

	// DefaultModel is the server's default model ("provider/id"): the
	// session config's default_model, and the model a run uses when the
	// request and the session name none. Default "agentsim/default".
	DefaultModel string

	// Models are further known models ("provider/id"), listed by GET
	// /v1/models with DefaultModel. A run on any other model fails like a
	// real custom model: two retry_attempt events, then run_error.
	Models []string

	// AutoApprove is the server's default tool policy: the tools (bare or
	// full names) it runs without a decision when a request's
	// overrides.auto_approve is absent or an unrecognised string. Empty:
	// none (auto_approve_mode "none"); otherwise "custom".
	AutoApprove []string

	// Logger receives debug logs of requests (method, path, status; never
	// headers or bodies) and warnings. Default: discard.
	Logger *slog.Logger
}

const (
	defaultRingSize           = 4096
	defaultKeepAlive          = 15 * time.Second
	defaultIdempotencyTTL     = 24 * time.Hour
	defaultStartDelay         = 20 * time.Millisecond
	defaultEndDelay           = 100 * time.Millisecond
	defaultCheckpointInterval = 5 * time.Second
	defaultRetryBackoff       = 10 * time.Millisecond
	defaultVersion            = "0.3.88-sim"
	defaultModel              = "agentsim/default"
)

// withDefaults returns opts with every unset field given its default.
func (o Options) withDefaults() Options {
	if o.RingSize <= 0 {
		o.RingSize = defaultRingSize
	}
	if o.SubscriberLag <= 0 {
		o.SubscriberLag = 2 * o.RingSize
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = defaultKeepAlive
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = defaultIdempotencyTTL
	}
	if o.EventInterval < 0 {
		o.EventInterval = 0
	}
	if o.StartDelay <= 0 {
		o.StartDelay = defaultStartDelay
	}
	if o.EndDelay <= 0 {
		o.EndDelay = defaultEndDelay
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = defaultCheckpointInterval
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = defaultRetryBackoff
	}
	if o.Version == "" {
		o.Version = defaultVersion
	}
	if o.DefaultModel == "" {
		o.DefaultModel = defaultModel
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
