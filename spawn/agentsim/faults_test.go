package agentsim

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FaultResetAfter: the request is applied, its answer is lost (the
// connection is reset instead); a retry with the same Idempotency-Key
// replays the stored 200, and the run goes on as if the answer had come.
func TestFaultResetAfter(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{Token: "tok"})
	c := newClient(t, base, "tok")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool view {}\n#sim text done")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)

	s.InjectFault(Fault{Route: RouteDecisions, Kind: FaultResetAfter})
	path := "/v1/sessions/" + sid + "/tools/decisions"
	body := map[string]any{"run_id": runID, "decisions": map[string]any{"call_1": map[string]any{"action": "accept"}}}
	key := map[string]string{"Idempotency-Key": "decide-1"}
	// A fresh connection: net/http itself replays a request that carries
	// an Idempotency-Key when a reused connection breaks.
	_, _, _, err := newClient(t, base, "tok").try("POST", path, body, key)
	require.Error(t, err, "the answer is lost: a connection reset")
	reqs := s.Requests()
	assert.Equal(t, 0, reqs[len(reqs)-1].Status, "recorded as answered with a reset")
	assert.Equal(t, []map[string]DecisionBody{{"call_1": {Action: "accept"}}}, s.Decisions(sid), "but the decision was applied")

	st2, b, _ := c.do("POST", path, body, key)
	require.Equal(t, http.StatusOK, st2, string(b))
	require.JSONEq(t, `{"accepted":true,"run_id":"`+runID+`"}`, string(b), "the retry replays the stored answer")
	frames := st.until("run_completed")
	assert.Contains(t, events(frames), "tool_execution_completed")
	assert.Equal(t, "completed", frames[len(frames)-1].payload(t)["stop_reason"])
	waitState(t, s, sid, stateIdle)

	// Without a key the effect is there too, and nothing replays it.
	s.InjectFault(Fault{Route: RouteCreateSession, Kind: FaultResetAfter})
	_, _, _, err = newClient(t, base, "tok").try("POST", "/v1/sessions", map[string]any{"title": "x"}, nil)
	require.Error(t, err)
	assert.Equal(t, 2, s.SessionCount(), "the session was created")

	// A request the auth layer refuses has no effect either way.
	s.InjectFault(Fault{Route: RouteCreateSession, Kind: FaultResetAfter})
	bad := newClient(t, base, "wrong")
	_, _, _, err = bad.try("POST", "/v1/sessions", map[string]any{"title": "y"}, nil)
	require.Error(t, err)
	assert.Equal(t, 2, s.SessionCount())

	// On the event stream it is a plain reset.
	s.InjectFault(Fault{Route: RouteEvents, Kind: FaultResetAfter})
	_, _, _, err = newClient(t, base, "tok").try("GET", "/v1/sessions/"+sid+"/events", nil, nil)
	require.Error(t, err)
}
