// Package agentsimtest starts the agent-server simulator (package agentsim)
// for tests: on 127.0.0.1, a random port, closed by the test's cleanup.
//
// It is apart from agentsim so that programs which run the simulator for
// people (`jetpilot agentsim`, `jetpilot dev`) do not link package testing
// or net/http/httptest.
package agentsimtest

import (
	"net"
	"net/http/httptest"
	"testing"

	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// New starts a simulator with opts on 127.0.0.1 for t and returns it with
// its base URL (no trailing slash). Cleanup closes both.
func New(t testing.TB, opts agentsim.Options) (*agentsim.Server, string) {
	t.Helper()
	s := agentsim.New(opts)
	ts := httptest.NewUnstartedServer(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		t.Fatalf("agentsimtest: listen on 127.0.0.1: %v", err)
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
