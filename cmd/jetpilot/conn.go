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
// the NATS tools' conventions: natscli contexts (--context, NATS_CONTEXT,
// the selected context), NATS_URL, NATS_CREDS, NATS_NKEY, NATS_USER,
// NATS_PASSWORD, NATS_TOKEN, NATS_CERT/NATS_KEY/NATS_CA, --creds, --nkey,
// --user/--password, --tlscert/--tlskey/--tlsca, --js-domain. See
// connSettings for which wins.
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
	natsContext  string
	jsDomain     string
	prefix       string
	replicas     int
	logJSON      string
	logLevel     string

	// flags is the flag set these are registered in, to tell a flag given
	// (on the command line or as JETPILOT_<FLAG>) from its default.
	flags *pflag.FlagSet
	// embedded: the command connects to the NATS server it started itself
	// (dev), so no context or NATS_* variable applies.
	embedded bool

	// perms records the permission violations NATS reports on the
	// connection connect opens, to explain requests that time out.
	perms *permissionErrors
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	g.flags = fs
	fs.StringVar(&g.natsURL, "nats", nats.DefaultURL, "NATS server URL(s), comma separated (env NATS_URL; else the NATS context's url)")
	fs.StringVar(&g.natsContext, "context", "", "natscli context: a name in ~/.config/nats/context, or a context file (env NATS_CONTEXT; default: the selected context)")
	fs.StringVar(&g.creds, "creds", "", "NATS credentials file (env NATS_CREDS)")
	fs.StringVar(&g.nkey, "nkey", "", "NATS nkey seed file (env NATS_NKEY)")
	fs.StringVar(&g.user, "user", "", "NATS user (env NATS_USER)")
	fs.StringVar(&g.password, "password", "", "NATS password (prefer --password-file or env NATS_PASSWORD: argv is visible to other users)")
	fs.StringVar(&g.passwordFile, "password-file", "", "file holding the NATS password")
	fs.StringVar(&g.tokenFile, "token-file", "", "file holding a NATS authentication token (or env NATS_TOKEN)")
	fs.StringVar(&g.tlsCert, "tlscert", "", "TLS client certificate file (env NATS_CERT)")
	fs.StringVar(&g.tlsKey, "tlskey", "", "TLS client key file (env NATS_KEY)")
	fs.StringVar(&g.tlsCA, "tlsca", "", "TLS CA certificate file (env NATS_CA)")
	fs.StringVar(&g.jsDomain, "js-domain", "", "JetStream domain (default: the NATS context's jetstream_domain)")
	fs.StringVar(&g.prefix, "prefix", "jetpilot", "subject prefix; streams are <PREFIX>_JOBS etc.")
	fs.IntVar(&g.replicas, "replicas", 1, "stream and KV replicas when creating them (3 on a cluster)")
	fs.StringVar(&g.logJSON, "log-json", "", "also write logs as JSON lines to this file")
	fs.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

func (g *globalFlags) queueConfig() queue.Config {
	return queue.Config{Prefix: g.prefix, Replicas: g.replicas}
}

// connSettings is how to connect, once flags, environment and context are
// weighed. Precedence, as natscli's: a flag (or its JETPILOT_<FLAG>
// variable) over the NATS_* variable over the context over the default,
// field by field for the URL, the TLS files and the JetStream domain. The
// credentials are taken as a whole from the first of these that gives any
// (--creds, --nkey, --user/--password[-file], --token-file; then
// NATS_CREDS, NATS_NKEY, NATS_USER/NATS_PASSWORD, NATS_TOKEN; then the
// context), so a context's password never goes along with a flag's creds.
type connSettings struct {
	url, urlFrom                       string
	creds, nkey, user, password        string
	token                              string
	authFrom                           string
	cert, key, ca                      string
	jsDomain, jsAPIPrefix, inboxPrefix string
	tlsFirst                           bool
	// context names the NATS context used ("" for none).
	context string
}

// changed reports whether the flag was given (on the command line or as
// JETPILOT_<FLAG>).
func (g *globalFlags) changed(name string) bool {
	if g.flags == nil {
		return false
	}
	f := g.flags.Lookup(name)
	return f != nil && f.Changed
}

// settings weighs flags, environment and the NATS context.
func (g *globalFlags) settings() (connSettings, error) {
	s := connSettings{url: g.natsURL, urlFrom: "--nats"}
	env := func(name string) string {
		if g.embedded {
			return ""
		}
		return os.Getenv(name)
	}
	var nctx *natsContext
	if !g.embedded {
		name, from := g.natsContext, "--context"
		if !g.changed("context") {
			name, from = os.Getenv("NATS_CONTEXT"), "NATS_CONTEXT"
		}
		if name == "" {
			sel, err := selectedNATSContext()
			if err != nil {
				return s, usageError("%v", err)
			}
			name, from = sel, "the selected NATS context (nats context select)"
		}
		if name != "" {
			c, err := loadNATSContext(name)
			if err != nil {
				return s, usageError("%s: %v", from, err)
			}
			nctx, s.context = c, c.Name
		}
	}
	if nctx == nil {
		nctx = &natsContext{}
	}
	pick := func(flag, flagVal, envName, ctxVal string) string {
		if g.changed(flag) {
			return flagVal
		}
		if v := env(envName); v != "" {
			return v
		}
		return ctxVal
	}
	switch {
	case g.changed("nats") || g.embedded:
	case env("NATS_URL") != "":
		s.url, s.urlFrom = env("NATS_URL"), "NATS_URL"
	case nctx.URL != "":
		s.url, s.urlFrom = nctx.URL, "context "+nctx.Name
	default:
		s.url, s.urlFrom = nats.DefaultURL, "default"
	}
	s.cert = pick("tlscert", g.tlsCert, "NATS_CERT", nctx.Cert)
	s.key = pick("tlskey", g.tlsKey, "NATS_KEY", nctx.Key)
	s.ca = pick("tlsca", g.tlsCA, "NATS_CA", nctx.CA)
	s.jsDomain, s.jsAPIPrefix, s.inboxPrefix, s.tlsFirst = nctx.JSDomain, nctx.JSAPIPrefix, nctx.InboxPrefix, nctx.TLSFirst
	if g.changed("js-domain") {
		s.jsDomain = g.jsDomain
	}
	if s.jsDomain != "" {
		s.jsAPIPrefix = "" // a domain names its API prefix
		if strings.ContainsAny(s.jsDomain, " \t\r\n.*>") {
			return s, usageError("--js-domain %q: a JetStream domain is one subject token", s.jsDomain)
		}
	}

	// Credentials: flags, else the environment, else the context.
	if g.password != "" && g.passwordFile != "" {
		return s, usageError("give --password or --password-file, not both")
	}
	switch {
	case g.creds != "" || g.nkey != "" || g.user != "" || g.password != "" || g.passwordFile != "" || g.tokenFile != "":
		s.authFrom = "flags"
		s.creds, s.nkey, s.user, s.password = g.creds, g.nkey, g.user, g.password
		if g.passwordFile != "" {
			p, err := readSecretFile(g.passwordFile)
			if err != nil {
				return s, fmt.Errorf("read --password-file: %w", err)
			}
			s.password = p
		}
		if g.tokenFile != "" {
			tok, err := readSecretFile(g.tokenFile)
			if err != nil {
				return s, fmt.Errorf("read --token-file: %w", err)
			}
			s.token = tok
		}
	case env("NATS_CREDS") != "" || env("NATS_NKEY") != "" || env("NATS_USER") != "" || env("NATS_PASSWORD") != "" || env("NATS_TOKEN") != "":
		s.authFrom = "environment"
		s.creds, s.nkey, s.user, s.password, s.token = env("NATS_CREDS"), env("NATS_NKEY"), env("NATS_USER"), env("NATS_PASSWORD"), env("NATS_TOKEN")
	default:
		s.authFrom = "context"
		s.creds, s.nkey, s.user, s.password, s.token = nctx.Creds, nctx.NKey, nctx.User, nctx.Password, nctx.Token
	}
	return s, nil
}

// connect opens a NATS connection that reconnects forever (a worker must
// ride out a NATS restart by itself) and its JetStream handle, in the
// JetStream domain (or API prefix) the settings name: every JetStream call
// of every command goes through it.
func (g *globalFlags) connect(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	s, err := g.settings()
	if err != nil {
		return nil, nil, err
	}
	if s.context != "" {
		log.Debug("using a NATS context", "context", s.context, "url_from", s.urlFrom, "credentials_from", s.authFrom)
	}
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
	if s.creds != "" {
		opts = append(opts, nats.UserCredentials(s.creds))
	}
	if s.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(s.nkey)
		if err != nil {
			return nil, nil, fmt.Errorf("read nkey seed file %s: %w", s.nkey, err)
		}
		opts = append(opts, o)
	}
	if s.user != "" || s.password != "" {
		opts = append(opts, nats.UserInfo(s.user, s.password))
	}
	if s.token != "" {
		opts = append(opts, nats.Token(s.token))
	}
	if s.cert != "" || s.key != "" {
		opts = append(opts, nats.ClientCert(s.cert, s.key))
	}
	if s.ca != "" {
		opts = append(opts, nats.RootCAs(s.ca))
	}
	if s.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(s.inboxPrefix))
	}
	if s.tlsFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	where := redactURL(s.url)
	if s.context != "" {
		where += " (NATS context " + s.context + ")"
	}
	if err := checkURLs(s.url); err != nil {
		return nil, nil, usageError("%s: %v", s.urlFrom, err)
	}
	nc, err := nats.Connect(s.url, opts...)
	if err != nil {
		if clean := scrubURLSecrets(err.Error(), s.url); clean != err.Error() {
			return nil, nil, fmt.Errorf("connect to NATS at %s: %s", where, clean)
		}
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", where, err)
	}
	var js jetstream.JetStream
	switch {
	case s.jsDomain != "":
		js, err = jetstream.NewWithDomain(nc, s.jsDomain)
	case s.jsAPIPrefix != "":
		js, err = jetstream.NewWithAPIPrefix(nc, s.jsAPIPrefix)
	default:
		js, err = jetstream.New(nc)
	}
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
