package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure StartEmbedded.
type EmbeddedOptions struct {
	// Dir is the JetStream store directory. Required: jobs live here, so
	// it is never guessed.
	Dir string
	// Host to listen on. Default "127.0.0.1", so a dev server is not
	// reachable from the network unless asked.
	Host string
	// Port to listen on. Default 4222; -1 picks a free port (read it back
	// with server.ClientURL()).
	Port int
	// ServerName names the server (and its JetStream node). Default: the
	// server's generated id.
	ServerName string
	// Logger receives the server's log lines. Default: the server logs
	// nothing.
	Logger *slog.Logger
	// ReadyTimeout bounds the wait for the server to accept connections.
	// Default 10s.
	ReadyTimeout time.Duration
	// Sync is when JetStream writes reach the disk (nats-server's
	// sync_interval). Default SyncAlways: every write is fsynced before it
	// is acknowledged, so an acknowledged job survives a power failure.
	// SyncLazy is nats-server's own default (an fsync every 2 minutes),
	// faster but an acknowledged write can be lost on power failure.
	Sync SyncMode
}

// SyncMode is how an embedded server flushes JetStream writes to disk.
// Build one with SyncAlways, SyncLazy or SyncEvery, or parse one with
// ParseSyncMode. The zero value is SyncAlways.
type SyncMode struct {
	lazy     bool
	interval time.Duration // lazy: the fsync interval; 0 means nats-server's default
}

// NatsDefaultSyncInterval is nats-server's default fsync interval of
// JetStream file stores (sync_interval), used when none is configured.
const NatsDefaultSyncInterval = 2 * time.Minute

var (
	// SyncAlways fsyncs every JetStream write before acknowledging it
	// (sync_interval: always).
	SyncAlways = SyncMode{}
	// SyncLazy is nats-server's default: JetStream writes are fsynced in
	// the background every NatsDefaultSyncInterval.
	SyncLazy = SyncMode{lazy: true}
)

// SyncEvery fsyncs JetStream writes in the background every d.
func SyncEvery(d time.Duration) SyncMode { return SyncMode{lazy: true, interval: d} }

// Always reports whether every write is fsynced.
func (m SyncMode) Always() bool { return !m.lazy }

// Interval is the background fsync interval of a lazy mode (0 for SyncAlways).
func (m SyncMode) Interval() time.Duration {
	if !m.lazy {
		return 0
	}
	if m.interval == 0 {
		return NatsDefaultSyncInterval
	}
	return m.interval
}

// String is the mode as ParseSyncMode reads it: "always", "default" or
// the interval.
func (m SyncMode) String() string {
	switch {
	case !m.lazy:
		return "always"
	case m.interval == 0:
		return "default"
	default:
		return m.interval.String()
	}
}

// ParseSyncMode reads "always", "default" (nats-server's: every 2
// minutes) or a positive duration such as "10s".
func ParseSyncMode(s string) (SyncMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "always", "":
		return SyncAlways, nil
	case "default", "lazy":
		return SyncLazy, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return SyncMode{}, fmt.Errorf("sync mode %q: want always, default or a positive duration such as 10s", s)
	}
	return SyncEvery(d), nil
}

// apply sets the server options for m.
func (m SyncMode) apply(o *server.Options) {
	o.SyncAlways = m.Always()
	o.SyncInterval = m.Interval()
	if m.Always() {
		// The background flush still runs; keep nats-server's interval.
		o.SyncInterval = NatsDefaultSyncInterval
	}
}

// StartEmbedded starts a nats-server with JetStream in this process and
// waits until it accepts connections. The caller owns it: call Shutdown
// (and WaitForShutdown) when done. For `jetpilot dev` and tests; production
// fleets run a real NATS server or cluster.
func StartEmbedded(opts EmbeddedOptions) (*server.Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("start embedded nats: store directory (Dir) is required")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = 4222
	}
	if opts.Port < -1 || opts.Port > 65535 {
		return nil, fmt.Errorf("start embedded nats: port must be -1 (random) or 1-65535, got %d", opts.Port)
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	sopts := &server.Options{
		ServerName: opts.ServerName,
		Host:       opts.Host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.Dir,
		NoSigs:     true,
		NoLog:      opts.Logger == nil,
	}
	opts.Sync.apply(sopts)
	s, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("start embedded nats: %w", err)
	}
	if opts.Logger != nil {
		debug := opts.Logger.Enabled(context.Background(), slog.LevelDebug)
		s.SetLoggerV2(slogAdapter{l: opts.Logger}, debug, false, false)
	}
	s.Start()
	if !s.ReadyForConnections(opts.ReadyTimeout) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("start embedded nats on %s:%d: not ready for connections after %s", opts.Host, opts.Port, opts.ReadyTimeout)
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("start embedded nats: JetStream failed to start with store dir %q", opts.Dir)
	}
	return s, nil
}

// slogAdapter lets the server log through slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) log(level slog.Level, format string, v ...any) {
	ctx := context.Background()
	if !a.l.Enabled(ctx, level) {
		return
	}
	a.l.Log(ctx, level, fmt.Sprintf(format, v...), "component", "nats-server")
}

func (a slogAdapter) Noticef(format string, v ...any) { a.log(slog.LevelInfo, format, v...) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.log(slog.LevelWarn, format, v...) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.log(slog.LevelError, format, v...) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.log(slog.LevelError, format, v...) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.log(slog.LevelDebug, format, v...) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.log(slog.LevelDebug-4, format, v...) }
