package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
)

// Defaults of Config.
const (
	// DefaultSessionTTL is how long a sign-in lasts.
	DefaultSessionTTL = 12 * time.Hour
	// DefaultMaxSessions bounds the signed-in sessions kept in memory.
	DefaultMaxSessions = 10_000
	// DefaultMaxDeadShown is how many of the newest dead letters the dead
	// letters page shows.
	DefaultMaxDeadShown = 200
)

// maxBody bounds a POST body: a decision is at most a NATS message.
const maxBody = 1 << 20

// Config configures a console Server.
type Config struct {
	// JS is the JetStream handle the console reads and publishes with.
	JS jetstream.JetStream
	// Queue names the streams and buckets (zero fields take their defaults).
	Queue queue.Config
	// Auth says who may sign in. At least one of Token and Users is needed.
	Auth Auth
	// Jobs lists jobs. Default: NewIndex, run by Serve.
	Jobs Jobs
	// Logger, default discard. Nothing secret is logged.
	Logger *slog.Logger
	// SessionTTL, default DefaultSessionTTL.
	SessionTTL time.Duration
	// MaxSessions, default DefaultMaxSessions.
	MaxSessions int
	// MaxDeadShown, default DefaultMaxDeadShown.
	MaxDeadShown int
}

// Server is the console: an http.Handler and what feeds it.
type Server struct {
	cfg      Config
	qcfg     queue.Config
	js       jetstream.JetStream
	client   *queue.Client
	policies *queue.PolicyStore
	audit    *queue.AuditLog
	jobs     Jobs
	index    *Index // the default Jobs, run by Serve; nil when Jobs was given
	sessions *sessions
	pages    map[string]*template.Template
	// checks bounds the password checks running at once: bcrypt is slow
	// on purpose, and sign-in attempts must not take every core.
	checks chan struct{}
	mux    *http.ServeMux
	log    *slog.Logger
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// New checks cfg and binds to the policy bucket and the audit stream.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.JS == nil {
		return nil, errors.New("console: Config.JS is nil")
	}
	if cfg.Auth.Token == "" && cfg.Auth.Users == nil {
		return nil, errors.New("console: no way to sign in: give a token or a users file")
	}
	if err := cfg.Queue.Validate(); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxDeadShown <= 0 {
		cfg.MaxDeadShown = DefaultMaxDeadShown
	}
	qcfg := cfg.Queue.WithDefaults()
	policies, err := queue.NewPolicyStore(ctx, cfg.JS, qcfg)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	audit, err := queue.NewAuditLog(ctx, cfg.JS, qcfg)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	s := &Server{cfg: cfg, qcfg: qcfg, js: cfg.JS, client: queue.NewClient(cfg.JS, qcfg), policies: policies, audit: audit,
		jobs: cfg.Jobs, sessions: newSessions(cfg.SessionTTL, cfg.MaxSessions), log: cfg.Logger, checks: make(chan struct{}, 2)}
	if s.jobs == nil {
		s.index = NewIndex(cfg.JS, qcfg, IndexOptions{Logger: cfg.Logger})
		s.jobs = s.index
	}
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("console: parse layout: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: list templates: %w", err)
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("console: parse %s: %w", n, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// Handler is the console's HTTP handler.
func (s *Server) Handler() http.Handler { return securityHeaders(s.mux) }

// Serve serves the console on ln until ctx is done, running the default
// job index meanwhile, then shuts down (live streams end with ctx).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if s.index != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.index.Run(ctx)
		}()
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("console: serve: %w", err)
	}
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = srv.Shutdown(shutdownCtx)
	wg.Wait()
	return err
}

// csp allows the console's own files only: no inline script or style, no
// eval, no framing, forms and fetches to the console alone.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin") // not no-referrer: with it, form POSTs carry "Origin: null"
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

func (s *Server) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	m.HandleFunc("GET /login", s.loginPage)
	m.HandleFunc("POST /login", s.login)
	m.HandleFunc("POST /logout", s.authed(s.logout, false))
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/jobs", http.StatusSeeOther) })
	m.HandleFunc("GET /jobs", s.authed(s.jobsPage, false))
	m.HandleFunc("GET /jobs/{id}", s.authed(s.jobPage, false))
	m.HandleFunc("GET /jobs/{id}/live", s.authed(s.jobLive, false))
	m.HandleFunc("GET /approvals", s.authed(s.approvalsPage, false))
	m.HandleFunc("POST /approvals/decide", s.authed(s.decide, true))
	m.HandleFunc("GET /dead", s.authed(s.deadPage, false))
	m.HandleFunc("POST /dead/requeue", s.authed(s.requeue, true))
	m.HandleFunc("GET /workers", s.authed(s.workersPage, false))
	m.HandleFunc("GET /policy", s.authed(s.policyPage, false))
	m.HandleFunc("GET /live", s.authed(s.live, false))
	s.mux = m
}
