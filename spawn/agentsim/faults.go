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
)

// Fault makes the next Count requests to Route fail with Kind. Faults are
// server-wide and checked before auth and idempotency, the way a proxy or a
// crashing server fails: a faulted request has no effect.
type Fault struct {
	// Route is one of the Route* names, or "*" for any route.
	Route string
	// Kind is "503", "500", "429", or "reset": the TCP connection is
	// closed (with RST) without any response.
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
	case Fault503, Fault500, Fault429, FaultReset:
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
	case FaultReset:
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
