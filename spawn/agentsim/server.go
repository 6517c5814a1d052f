package agentsim

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// Server is the simulated agent server. It is an http.Handler; use
// NewTestServer in tests, or Serve / ListenAndServe to run it.
type Server struct {
	opts  Options
	log   *slog.Logger
	start time.Time
	mux   *http.ServeMux
	idem  *idemStore

	// ctx is cancelled by Close: runs and streams stop on it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // runs and open event streams

	mu          sync.Mutex
	closed      bool
	down        bool
	sessions    map[string]*session
	requests    []*RecordedRequest
	runPrompts  []string // prompt of every started run, in order
	cancels     int
	faults      []*activeFault
	failedSends map[string]int // prompt -> "#sim fail-send" failures served
}

// New returns a Server with opts (see Options for defaults). Call Close
// when done with it.
func New(opts Options) *Server {
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:        opts,
		log:         opts.Logger,
		start:       time.Now(),
		mux:         http.NewServeMux(),
		idem:        newIdemStore(opts.IdempotencyTTL),
		ctx:         ctx,
		cancel:      cancel,
		sessions:    make(map[string]*session),
		failedSends: make(map[string]int),
	}
	s.routes()
	return s
}

// routes registers every endpoint of AGENT_SERVER_API.md.
func (s *Server) routes() {
	s.handle("GET /v1/health", RouteHealth, true, s.jsonRoute(false, s.handleHealth))
	s.handle("GET /v1/openapi.json", RouteOpenAPI, true, s.jsonRoute(false, s.handleOpenAPI))
	s.handle("POST /v1/sessions", RouteCreateSession, false, s.jsonRoute(true, s.handleCreateSession))
	s.handle("GET /v1/sessions/{id}", RouteGetSession, false, s.jsonRoute(false, s.handleGetSession))
	s.handle("POST /v1/sessions/{id}/messages", RouteSendMessage, false, s.sendRoute())
	s.handle("GET /v1/sessions/{id}/messages", RouteMessages, false, s.jsonRoute(false, s.handleListMessages))
	s.handle("GET /v1/sessions/{id}/events", RouteEvents, false, s.handleEvents)
	s.handle("POST /v1/sessions/{id}/tools/decisions", RouteDecisions, false, s.jsonRoute(true, s.handleDecisions))
	s.handle("POST /v1/sessions/{id}/tools/{call}/decision", RouteDecisions, false, s.jsonRoute(true, s.handleDecision))
	s.handle("GET /v1/sessions/{id}/tools/pending", RoutePending, false, s.jsonRoute(false, s.handlePending))
	s.handle("POST /v1/sessions/{id}/cancel", RouteCancel, false, s.jsonRoute(true, s.handleCancel))
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errf(http.StatusNotFound, codeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
}

// handle wraps h with what every route does before its handler: injected
// faults, then auth (unless public).
func (s *Server) handle(pattern, route string, public bool, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if kind := s.takeFault(route); kind != "" {
			s.failWith(w, kind)
			return
		}
		if !public && !s.authorized(r) {
			// The auth layer answers before any handler: no request_id.
			b, _ := marshal(errorBody{Error: "missing or invalid bearer token", Code: codeUnauthorized})
			writeJSON(w, http.StatusUnauthorized, b)
			return
		}
		h(w, r)
	})
}

// authorized reports whether r carries the configured bearer token. With no
// token configured every request is authorized, whatever it carries.
func (s *Server) authorized(r *http.Request) bool {
	if s.opts.Token == "" {
		return true
	}
	want := "Bearer " + s.opts.Token
	got := r.Header.Get("Authorization")
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// ServeHTTP records the request, simulates an outage when the server is
// down, and dispatches to the route.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	rec := &RecordedRequest{
		Method: r.Method,
		Path:   r.URL.Path,
		Header: r.Header.Clone(),
		Body:   body,
		At:     time.Now(),
	}
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	down, closed := s.down, s.closed
	s.mu.Unlock()
	sw := &statusWriter{ResponseWriter: w, s: s, rec: rec}
	defer func() {
		s.mu.Lock()
		status := rec.Status
		s.mu.Unlock()
		s.log.Debug("agentsim request", "method", r.Method, "path", r.URL.Path, "status", status)
	}()

	switch {
	case down:
		resetConn(w)
		return
	case closed:
		writeError(sw, errf(http.StatusServiceUnavailable, codeUnavailable, "server is shutting down"))
		return
	case readErr != nil:
		writeError(sw, errf(http.StatusBadRequest, codeInvalidRequest, "read request body: %v", readErr))
		return
	case int64(len(body)) > maxRequestBody:
		writeError(sw, errf(http.StatusRequestEntityTooLarge, codeInvalidRequest, "request body larger than %d bytes", maxRequestBody))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, body))
	s.mux.ServeHTTP(sw, r)
}

type bodyKey struct{}

// requestBody returns the body ServeHTTP read.
func requestBody(r *http.Request) []byte {
	b, _ := r.Context().Value(bodyKey{}).([]byte)
	return b
}

// Close ends every run and open event stream and waits until all of their
// goroutines have returned. Requests after Close get 503. Close is safe to
// call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// Serve answers requests on ln until ctx is done, then closes the simulator
// and shuts the HTTP server down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("agentsim listening", "addr", ln.Addr().String())
	select {
	case <-ctx.Done():
		s.Close() // ends streams first: Shutdown waits for handlers
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutCtx); err != nil {
			_ = srv.Close()
		}
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("agentsim: serve %s: %w", ln.Addr(), err)
		}
		return nil
	case err := <-errc:
		s.Close()
		return fmt.Errorf("agentsim: serve %s: %w", ln.Addr(), err)
	}
}

// ListenAndServe runs a simulator on addr until ctx is done. It is what
// `jetpilot agentsim --addr` calls.
func ListenAndServe(ctx context.Context, addr string, opts Options) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("agentsim: listen on %s: %w", addr, err)
	}
	return New(opts).Serve(ctx, ln)
}

// NewTestServer starts a simulator on 127.0.0.1 for t and returns it with
// its base URL (no trailing slash). Cleanup closes both.
func NewTestServer(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s := New(opts)
	ts := httptest.NewUnstartedServer(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		t.Fatalf("agentsim: listen on 127.0.0.1: %v", err)
	}
	_ = ts.Listener.Close()
	ts.Listener = ln
	ts.Start()
	t.Cleanup(func() {
		s.Close() // ends streams, so ts.Close does not wait on them
		ts.Close()
	})
	return s, ts.URL
}
