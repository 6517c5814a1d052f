package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
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
	// passwordFile and tokenFile hold a NATS password or token, so no
	// secret needs to be on the command line.
	passwordFile string
	tokenFile    string
	tlsCert      string
	tlsKey       string
	tlsCA        string
	prefix       string
	replicas     int
	logJSON      string
	logLevel     string

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
	fs.StringVar(&g.password, "password", "", "NATS password (prefer --password-file or env JETPILOT_PASSWORD: argv is visible to other users)")
	fs.StringVar(&g.passwordFile, "password-file", "", "file holding the NATS password")
	fs.StringVar(&g.tokenFile, "token-file", "", "file holding a NATS authentication token")
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
	password := g.password
	if g.passwordFile != "" {
		if g.password != "" {
			return nil, nil, usageError("give --password or --password-file, not both")
		}
		p, err := readSecretFile(g.passwordFile)
		if err != nil {
			return nil, nil, fmt.Errorf("read --password-file: %w", err)
		}
		password = p
	}
	if g.user != "" || password != "" {
		opts = append(opts, nats.UserInfo(g.user, password))
	}
	if g.tokenFile != "" {
		tok, err := readSecretFile(g.tokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("read --token-file: %w", err)
		}
		opts = append(opts, nats.Token(tok))
	}
	if g.tlsCert != "" || g.tlsKey != "" {
		opts = append(opts, nats.ClientCert(g.tlsCert, g.tlsKey))
	}
	if g.tlsCA != "" {
		opts = append(opts, nats.RootCAs(g.tlsCA))
	}
	if err := checkURLs(g.natsURL); err != nil {
		return nil, nil, usageError("--nats: %v", err)
	}
	nc, err := nats.Connect(g.natsURL, opts...)
	if err != nil {
		if clean := scrubURLSecrets(err.Error(), g.natsURL); clean != err.Error() {
			return nil, nil, fmt.Errorf("connect to NATS at %s: %s", redactURL(g.natsURL), clean)
		}
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

// readSecretFile reads a secret from a file, surrounding white space
// trimmed. The secret is never part of an error.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

// splitURLs splits a comma-separated URL list as nats.Connect does.
func splitURLs(list string) []string {
	parts := strings.Split(list, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// checkURLs checks that every URL of a comma-separated list parses; an
// error names the item by its place in the list, never by its text, which
// may hold a password.
func checkURLs(list string) error {
	parts := splitURLs(list)
	for i, p := range parts {
		if p == "" {
			continue
		}
		raw := p
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw // nats.go accepts host:port
		}
		if _, err := url.Parse(raw); err != nil {
			return fmt.Errorf("URL %d of %d does not parse (its text is not shown: it may hold a password)", i+1, len(parts))
		}
	}
	return nil
}

// redactURL drops every password (and a token given as the user, as in
// nats://TOKEN@host) from a comma-separated list of URLs before it is
// logged or printed. An item that does not parse is not shown at all.
func redactURL(list string) string {
	parts := splitURLs(list)
	for i, p := range parts {
		parts[i] = redactOne(p, i+1)
	}
	return strings.Join(parts, ",")
}

func redactOne(s string, n int) string {
	raw := s
	if !strings.Contains(raw, "://") {
		raw = "nats://" + raw // nats.go accepts host:port
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("<URL %d: does not parse>", n)
	}
	if u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	} else {
		u.User = url.User("REDACTED")
	}
	return u.String()
}

// scrubURLSecrets removes from text (an error from nats.go) every password
// and user-token of the URLs in list, and every URL text of the list that
// carries credentials.
func scrubURLSecrets(text, list string) string {
	for _, p := range splitURLs(list) {
		if !strings.Contains(p, "@") {
			continue
		}
		text = strings.ReplaceAll(text, p, "<URL with credentials>")
		raw := p
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && pw != "" {
				text = strings.ReplaceAll(text, pw, "REDACTED")
			} else if name := u.User.Username(); name != "" {
				text = strings.ReplaceAll(text, name, "REDACTED")
			}
		}
	}
	return text
}
