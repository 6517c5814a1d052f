package agentsim

import (
	"net"
	"net/http"
)

// Route names, for Fault.Route.
const (
	RouteCreateSession = "create_session"
	RouteGetSession    = "get_session"
	RouteSendMessage   = "send_message"
	RouteEvents        = "events"
	RouteDecisions     = "decisions" // both decision endpoints
	RoutePending       = "pending"
	RouteCancel        = "cancel"
	RouteMessages      = "messages"
	RouteHealth        = "health"
	RouteOpenAPI       = "openapi"
	RouteModels        = "models"
	RouteAny           = "*"
)

// Fault kinds, for Fault.Kind.
const (
	Fault503   = "503"
	Fault500   = "500"
	Fault429   = "429"
	FaultReset = "reset"
	// FaultResetAfter runs the request as usual (auth, idempotency, the
	// handler and its effects), then closes the connection with a TCP RST
	// instead of writing the answer: the server applied the request and
	// the client never hears so. An Idempotency-Key stores the answer as
	// usual, so a retry with it replays the 200.
	FaultResetAfter = "reset-after"
)

// Fault makes the next Count requests to Route fail with Kind. Faults are
// server-wide and checked before auth and idempotency, the way a proxy or a
// crashing server fails: a faulted request has no effect, except with
// FaultResetAfter, whose request takes effect and loses only its answer.
type Fault struct {
	// Route is one of the Route* names, or "*" for any route.
	Route string
	// Kind is "503", "500", "429", "reset": the TCP connection is
	// closed (with RST) without any response, or "reset-after": the
	// request is served, then the connection is closed with RST instead
	// of the answer. On the events route "reset-after" acts as "reset" (a
	// stream's answer never ends).
	Kind string
	// Count is how many matching requests fail before normal service
	// resumes. Values below 1 are treated as 1.
	Count int
}

type activeFault struct {
	Fault
	left int
}

// InjectFault arms f. Several faults may be armed; the first one armed that
// matches a request and has failures left is used.
func (s *Server) InjectFault(f Fault) {
	switch f.Kind {
	case Fault503, Fault500, Fault429, FaultReset, FaultResetAfter:
	default:
		s.log.Warn("agentsim: unknown fault kind, using 500", "kind", f.Kind)
		f.Kind = Fault500
	}
	if f.Count < 1 {
		f.Count = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &activeFault{Fault: f, left: f.Count})
}

// SetDown simulates an outage: while down, every request is answered with a
// connection reset.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// takeFault returns the kind of the armed fault matching route, consuming
// one of its failures, or "" when none matches.
func (s *Server) takeFault(route string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.faults {
		if f.left > 0 && (f.Route == route || f.Route == RouteAny) {
			f.left--
			return f.Kind
		}
	}
	return ""
}

// failWith answers the request the way kind says.
func (s *Server) failWith(w http.ResponseWriter, kind string) {
	switch kind {
	case FaultReset, FaultResetAfter: // (fail-send has no reset-after)
		resetConn(w)
	case Fault503:
		writeError(w, errf(http.StatusServiceUnavailable, codeUnavailable, "service unavailable (agentsim fault)"))
	case Fault429:
		writeError(w, errf(http.StatusTooManyRequests, codeRateLimited, "rate limited (agentsim fault)"))
	default:
		writeError(w, errf(http.StatusInternalServerError, codeInternal, "internal error (agentsim fault)"))
	}
}

// resetConn hijacks the connection and closes it with a TCP RST, so the
// client sees "connection reset by peer" and no response at all.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2): abort the handler, which also drops the
		// response.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// cutConn hijacks the connection and closes it normally: a stream in
// progress ends without its chunked terminator.
func cutConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// lostAnswer is the ResponseWriter a FaultResetAfter request is served
// with: the handler runs and its answer goes nowhere. It does not let the
// handler flush or hijack (a handler that tries aborts, which also ends
// in a dropped connection).
type lostAnswer struct{ h http.Header }

func (l *lostAnswer) Header() http.Header {
	if l.h == nil {
		l.h = make(http.Header)
	}
	return l.h
}

func (l *lostAnswer) Write(b []byte) (int, error) { return len(b), nil }

func (l *lostAnswer) WriteHeader(int) {}

// faulted answers a request an armed fault of kind hit, on route m: most
// kinds fail it before anything happens (failWith); FaultResetAfter serves
// it as usual (auth, idempotency, the handler's effects), with the answer
// discarded, then resets the connection: the request took effect and the
// client never hears so. On the events route it is a plain reset.
func (s *Server) faulted(w http.ResponseWriter, r *http.Request, kind string, m method) {
	if kind != FaultResetAfter || m.name == RouteEvents {
		s.failWith(w, kind)
		return
	}
	func() {
		defer func() {
			if p := recover(); p != nil && p != http.ErrAbortHandler {
				panic(p)
			}
		}()
		if !m.public && !s.authorized(r) {
			return // a 401 changes nothing: there is nothing to lose
		}
		m.handler(&lostAnswer{}, r)
	}()
	resetConn(w)
}
