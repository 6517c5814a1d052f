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
	"slices"
	"strings"
	"sync"
	"time"
)

// Server is the simulated agent server. It is an http.Handler; tests start
// it with agentsimtest.New, programs with Serve or ListenAndServe.
type Server struct {
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	// ctx is cancelled by Close: runs and streams stop on it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // runs, checkpointers and open event streams

	mu          sync.Mutex
	closed      bool
	down        bool
	token       string
	start       time.Time            // of the (last) server start: uptime
	life        *lifetime            // what a Restart ends
	idem        *idemStore           // forgotten by Restart
	logs        map[string]*eventLog // event rings by session id; forgotten by Restart
	sessions    map[string]*session  // durable: kept by Restart
	requests    []*RecordedRequest
	runPrompts  []string // prompt of every started run, in order
	cancels     int
	steers      int
	faults      []*activeFault
	failedSends map[string]int // prompt -> "#sim fail-send" failures served

	// afterIdemLookup, when set (by tests, before any request), runs after
	// an Idempotency-Key lookup that lets the request proceed: it holds
	// requests there to show that nothing is reserved.
	afterIdemLookup func(path string)
}

// lifetime is one server process's life: Restart cancels it, which cuts
// the open event streams of that life.
type lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newLifetime(parent context.Context) *lifetime {
	ctx, cancel := context.WithCancel(parent)
	return &lifetime{ctx: ctx, cancel: cancel}
}

// New returns a Server with opts (see Options for defaults). Call Close
// when done with it.
func New(opts Options) *Server {
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:        opts,
		log:         opts.Logger,
		mux:         http.NewServeMux(),
		ctx:         ctx,
		cancel:      cancel,
		token:       opts.Token,
		start:       time.Now(),
		life:        newLifetime(ctx),
		idem:        newIdemStore(opts.IdempotencyTTL),
		logs:        make(map[string]*eventLog),
		sessions:    make(map[string]*session),
		failedSends: make(map[string]int),
	}
	s.routes()
	return s
}

// method is one method of a route: its fault name, whether it is public,
// and its handler.
type method struct {
	name    string
	public  bool
	handler http.HandlerFunc
}

// routes registers every endpoint of AGENT_SERVER_API.md. Unknown paths
// answer 404 with an empty body (without auth, as axum's route_layer), a
// known path with another method 405 with an empty body.
func (s *Server) routes() {
	s.route("/v1/health", map[string]method{"GET": {RouteHealth, true, s.api(s.handleHealth)}})
	s.route("/v1/openapi.json", map[string]method{"GET": {RouteOpenAPI, true, s.api(s.handleOpenAPI)}})
	s.route("/v1/models", map[string]method{"GET": {RouteModels, false, s.api(s.handleModels)}})
	s.route("/v1/sessions", map[string]method{"POST": {RouteCreateSession, false, s.api(s.handleCreateSession)}})
	s.route("/v1/sessions/{id}", map[string]method{"GET": {RouteGetSession, false, s.api(s.handleGetSession)}})
	s.route("/v1/sessions/{id}/messages", map[string]method{
		"POST": {RouteSendMessage, false, s.sendRoute},
		"GET":  {RouteMessages, false, s.api(s.handleListMessages)},
	})
	s.route("/v1/sessions/{id}/events", map[string]method{"GET": {RouteEvents, false, s.handleEvents}})
	s.route("/v1/sessions/{id}/tools/pending", map[string]method{"GET": {RoutePending, false, s.api(s.handlePending)}})
	s.route("/v1/sessions/{id}/tools/decisions", map[string]method{"POST": {RouteDecisions, false, s.api(s.handleDecisions)}})
	s.route("/v1/sessions/{id}/tools/resolve", map[string]method{"POST": {RouteDecisions, false, s.api(s.handleDecisions)}})
	s.route("/v1/sessions/{id}/tools/{call}/decision", map[string]method{"POST": {RouteDecisions, false, s.api(s.handleDecision)}})
	s.route("/v1/sessions/{id}/cancel", map[string]method{"POST": {RouteCancel, false, s.api(s.handleCancel)}})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNotFound)
	})
}

// route registers pattern; each method is wrapped with what every route
// does before its handler: injected faults, then auth (unless public).
func (s *Server) route(pattern string, methods map[string]method) {
	allow := make([]string, 0, len(methods))
	for m := range methods {
		allow = append(allow, m)
	}
	slices.Sort(allow)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		m, ok := methods[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allow, ","))
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		if kind := s.takeFault(m.name); kind != "" {
			s.faulted(w, r, kind, m)
			return
		}
		if !m.public && !s.authorized(r) {
			// The auth layer answers before any handler: no request_id.
			writeJSON(w, http.StatusUnauthorized, []byte(`{"error":"Unauthorized","code":"unauthorized"}`))
			return
		}
		m.handler(w, r)
	})
}

// authorized reports whether r carries the current bearer token. With no
// token every request is authorized, whatever it carries.
func (s *Server) authorized(r *http.Request) bool {
	s.mu.Lock()
	token := s.token
	s.mu.Unlock()
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// SetToken rotates the bearer token without a restart. Empty disables
// auth.
func (s *Server) SetToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = token
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
		writePlain(sw, plainf(http.StatusBadRequest, "Failed to buffer the request body: %v", readErr))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r = r.WithContext(context.WithValue(r.Context(), bodyKey{}, body))
	s.mux.ServeHTTP(sw, r)
}

type bodyKey struct{}

// requestBody returns the body ServeHTTP read (at most the limit + 1).
func requestBody(r *http.Request) []byte {
	b, _ := r.Context().Value(bodyKey{}).([]byte)
	return b
}

// bodyTooBig reports whether the body is over the 2 MB limit. Only routes
// that decode a JSON body answer 413, as axum's extractor does.
func bodyTooBig(r *http.Request) bool { return int64(len(requestBody(r))) > maxRequestBody }

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

// Restart simulates a restart of the server process: sessions and their
// messages (as of their last checkpoint) are kept, as the real server
// keeps them on disk; runs are killed without any terminal event, and the
// event rings (ids restart at 1), Idempotency-Keys, pending tool calls and
// open event streams are lost. The token becomes newToken and uptime
// restarts at 0. Afterwards every session reads idle.
func (s *Server) Restart(newToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.life.cancel()
	s.life = newLifetime(s.ctx)
	for _, sess := range s.sessions {
		if r := sess.run; r != nil {
			r.killLocked()
		}
		sess.run = nil
		sess.state = stateIdle
		sess.pending = nil
		sess.drop, sess.stall = connFault{}, connFault{}
	}
	s.logs = make(map[string]*eventLog)
	s.idem = newIdemStore(s.opts.IdempotencyTTL)
	s.token = newToken
	s.start = time.Now()
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
