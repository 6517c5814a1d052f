package agentsim

import (
	"log/slog"
	"time"
)

// Options configure a Server. The zero value is usable: every field has a
// documented default.
type Options struct {
	// Token is the bearer token protected routes require. Empty means no
	// auth: any Authorization header, or none, is accepted.
	Token string

	// RingSize is how many events each session keeps for Last-Event-ID
	// replay. Default 1024. A script can lower it per session with
	// "#sim ring <n>".
	RingSize int

	// KeepAlive is the interval of ": keepalive" comment frames on event
	// streams. Default 15s, as the real server.
	KeepAlive time.Duration

	// IdempotencyTTL is how long Idempotency-Keys are remembered.
	// Default 10m.
	IdempotencyTTL time.Duration

	// EventInterval is the pause between a run's events. Default 0: as fast
	// as possible, which is what makes the late-subscriber trap bite.
	EventInterval time.Duration

	// Version is reported by GET /v1/health. Default "0.3.88-sim".
	Version string

	// DefaultModel is the session config's default_model, and the model a
	// run uses when the request names none. Default "agentsim/default".
	DefaultModel string

	// Logger receives debug logs of requests (method, path, status; never
	// headers or bodies) and warnings. Default: discard.
	Logger *slog.Logger
}

const (
	defaultRingSize       = 1024
	defaultKeepAlive      = 15 * time.Second
	defaultIdempotencyTTL = 10 * time.Minute
	defaultVersion        = "0.3.88-sim"
	defaultModel          = "agentsim/default"
)

// withDefaults returns opts with every unset field given its default.
func (o Options) withDefaults() Options {
	if o.RingSize <= 0 {
		o.RingSize = defaultRingSize
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
