// Package agentsimtest starts the agent-server simulator (package agentsim)
// for tests: on 127.0.0.1, a random port, closed by the test's cleanup.
//
// It is apart from agentsim so that programs which run the simulator for
// people (`jetpilot agentsim`, `jetpilot dev`) do not link package testing
// or net/http/httptest.
package agentsimtest

import (
	"testing"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// New starts a simulator with opts on 127.0.0.1 for t and returns it with
// its base URL (no trailing slash). Cleanup closes both.
func New(t testing.TB, opts agentsim.Options) (*agentsim.Server, string) {
	t.Helper()
	s := agentsim.New(opts)
	// s.Close first ends the streams, so the server's Close does not wait on them.
	return s, testsupport.LocalServer(t, s, s.Close).URL
}
