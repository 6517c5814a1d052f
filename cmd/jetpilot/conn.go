package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetpilot-dev/jetpilot/queue"
)

// globalFlags are the NATS connection flags every command shares. They follow
// the NATS tools' conventions (NATS_URL, --creds, --nkey, --user/--password,
// --tlscert/--tlskey/--tlsca).
type globalFlags struct {
	natsURL  string
	creds    string
	nkey     string
	user     string
	password string
	tlsCert  string
	tlsKey   string
	tlsCA    string
	prefix   string
	replicas int
	logJSON  string
	logLevel string

	// perms records the permission violations NATS reports on the
	// connection connect opens, to explain requests that time out.
	perms *permissionErrors
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	def := os.Getenv("NATS_URL")
	if def == "" {
		def = nats.DefaultURL
	}
	fs.StringVar(&g.natsURL, "nats", def, "NATS server URL(s), comma separated (env NATS_URL)")
	fs.StringVar(&g.creds, "creds", "", "NATS credentials file")
	fs.StringVar(&g.nkey, "nkey", "", "NATS nkey seed file")
	fs.StringVar(&g.user, "user", "", "NATS user")
	fs.StringVar(&g.password, "password", "", "NATS password")
	fs.StringVar(&g.tlsCert, "tlscert", "", "TLS client certificate file")
	fs.StringVar(&g.tlsKey, "tlskey", "", "TLS client key file")
	fs.StringVar(&g.tlsCA, "tlsca", "", "TLS CA certificate file")
	fs.StringVar(&g.prefix, "prefix", "jetpilot", "subject prefix; streams are <PREFIX>_JOBS etc.")
	fs.IntVar(&g.replicas, "replicas", 1, "stream and KV replicas when creating them (3 on a cluster)")
	fs.StringVar(&g.logJSON, "log-json", "", "also write logs as JSON lines to this file")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

func (g *globalFlags) queueConfig() queue.Config {
	return queue.Config{Prefix: g.prefix, Replicas: g.replicas}
}

// connect opens a NATS connection that reconnects forever: a worker must ride
// out a NATS restart by itself.
func (g *globalFlags) connect(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", "server", redactURL(nc.ConnectedUrl()))
		}),
	}
	g.perms = &permissionErrors{}
	opts = append(opts, nats.ErrorHandler(errorHandler(g.perms, log)))
	if g.creds != "" {
		opts = append(opts, nats.UserCredentials(g.creds))
	}
	if g.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(g.nkey)
		if err != nil {
			return nil, nil, fmt.Errorf("read nkey seed file %s: %w", g.nkey, err)
		}
		opts = append(opts, o)
	}
	if g.user != "" || g.password != "" {
		opts = append(opts, nats.UserInfo(g.user, g.password))
	}
	if g.tlsCert != "" || g.tlsKey != "" {
		opts = append(opts, nats.ClientCert(g.tlsCert, g.tlsKey))
	}
	if g.tlsCA != "" {
		opts = append(opts, nats.RootCAs(g.tlsCA))
	}
	nc, err := nats.Connect(g.natsURL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", redactURL(g.natsURL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open JetStream: %w", err)
	}
	return nc, js, nil
}

// withConn gives a command its logger and NATS connection, and closes both
// when fn returns.
func withConn(cmd *cobra.Command, g *globalFlags, name string, fn func(ctx context.Context, log *slog.Logger, nc *nats.Conn, js jetstream.JetStream) error) error {
	log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	defer closeLog()
	nc, js, err := g.connect(cmd.Context(), name, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	return fn(cmd.Context(), log, nc, js)
}

// redactURL drops any password from a URL before it is logged or printed.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}
