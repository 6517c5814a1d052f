package agentsim

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func kinds(sc *script) []actionKind {
	var out []actionKind
	for _, a := range sc.actions {
		out = append(out, a.kind)
	}
	return out
}

func TestParseScript(t *testing.T) {
	sc, err := parseScript("just a prompt")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actText, actTurnEnd}, kinds(sc))
	assert.Equal(t, defaultText, sc.actions[1].text)
	assert.Equal(t, "completed", sc.stopReason)
	assert.Equal(t, 1, sc.turns)
	assert.Equal(t, -1, sc.dropAfter)

	sc, err = parseScript("intro\n  #sim text a\\nb\r\n#sim tool t1 {\"a\":1}\n#sim tool t2\n#sim ring 4\n#sim drop-after 2\n#sim stall-after 0\n#sim stop max_turns\n#sim usage 1 2")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actText, actTools, actTurnStart, actTurnEnd}, kinds(sc))
	assert.Equal(t, "a\nb", sc.actions[1].text)
	require.Len(t, sc.actions[2].calls, 2)
	assert.JSONEq(t, `{"a":1}`, string(sc.actions[2].calls[0].args))
	assert.JSONEq(t, `{}`, string(sc.actions[2].calls[1].args))
	assert.Equal(t, 2, sc.turns)
	assert.Equal(t, [3]int{4, 2, 0}, [3]int{sc.ringSize, sc.dropAfter, sc.stallAfter})
	assert.Equal(t, "max_turns", sc.stopReason)
	assert.Equal(t, &[2]int64{1, 2}, sc.usage)

	// Nothing runs after hang or error; the default text comes first, and
	// an inference directive after answer content starts the next turn.
	sc, err = parseScript("#sim error boom\n#sim text never")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actText, actTurnEnd, actTurnStart, actError}, kinds(sc))
	sc, err = parseScript("#sim hang")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actText, actHang}, kinds(sc))
	sc, err = parseScript("#sim sleep 1s\n#sim retry\n#sim text a\n#sim sleep 2s\n#sim text-stream b")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actSleep, actRetry, actText, actTurnEnd, actTurnStart, actSleep, actTextStream, actTurnEnd}, kinds(sc))
	sc, err = parseScript("#sim tool-time 2s\n#sim tool a\n#sim die\n#sim text never")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actTools, actDie}, kinds(sc))
	assert.Equal(t, 2*time.Second, sc.actions[1].calls[0].time)
	sc, err = parseScript("#sim die")
	require.NoError(t, err)
	assert.True(t, sc.dieAtStart)
	assert.Empty(t, sc.actions)

	sc, err = parseScript("#sim turns 2\n#sim text abcd")
	require.NoError(t, err)
	assert.Equal(t, []actionKind{actTurnStart, actText, actTurnEnd, actTurnStart, actText, actTurnEnd}, kinds(sc))
	assert.Equal(t, "ab", sc.actions[1].text)

	for _, bad := range []string{
		"#sim nope", "#sim text", "#sim bigtext -1", "#sim bigtext 1GB", "#sim sleep soon",
		"#sim tool", "#sim tool x {bad", "#sim usage 1", "#sim usage a b", "#sim stop",
		"#sim ring 0", "#sim turns 0", "#sim fail-send 0 503", "#sim fail-send 1 404",
		"#sim drop-after x", "#sim error", "#sim tool-time soon", "#sim text-stream",
	} {
		_, err := parseScript("p\n" + bad)
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "line 2", bad)
	}
}

func TestFailSendDirective(t *testing.T) {
	n, kind, ok := failSendDirective("x\n#sim fail-send 3 reset")
	require.True(t, ok)
	assert.Equal(t, 3, n)
	assert.Equal(t, FaultReset, kind)
	_, _, ok = failSendDirective("#sim text hi")
	assert.False(t, ok)
}

func TestTextChunksAndSplit(t *testing.T) {
	s := "héllo wörld ✓✓✓ done"
	chunks := textChunks(s, 5)
	assert.Equal(t, s, strings.Join(chunks, ""))
	for _, c := range chunks {
		assert.True(t, utf8.ValidString(c), c)
		assert.LessOrEqual(t, len(c), 7)
	}
	parts := splitRunes("ab✓d", 3)
	assert.Equal(t, "ab✓d", strings.Join(parts, ""))
	assert.Len(t, parts, 3)
	assert.Equal(t, []string{"a"}, splitRunes("a", 5))
}

func TestAutoApproveMatching(t *testing.T) {
	a := autoApprove{tools: []string{"view", "stakpak__run_command"}}
	assert.True(t, a.allows("view"))
	assert.True(t, a.allows("stakpak__view"))
	assert.True(t, a.allows("stakpak__run_command"))
	// Entries and names are compared without their prefix, as the real
	// policy does.
	assert.True(t, a.allows("other__run_command"))
	assert.False(t, a.allows("stakpak__"))
	assert.False(t, a.allows("run_command_task"))
	assert.True(t, autoApprove{all: true}.allows("anything"))
}

func TestServeStopsOnContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Options{})
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, ln) }()
	c := newClient(t, "http://"+ln.Addr().String(), "")
	st := c.subscribe(c.createSession(), -1) // an open stream must not block shutdown
	status, _, _ := c.do("GET", "/v1/health", nil, nil)
	require.Equal(t, http.StatusOK, status)
	cancel()
	select {
	case err := <-errc:
		require.NoError(t, err)
	case <-time.After(waitFor):
		require.FailNow(t, "Serve did not stop")
	}
	require.NoError(t, st.ended())

	err = ListenAndServe(context.Background(), "127.0.0.1:bad", Options{})
	require.ErrorContains(t, err, "listen on 127.0.0.1:bad")
}
