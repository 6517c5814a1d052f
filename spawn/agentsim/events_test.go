package agentsim

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReplayFromZeroAndEnvelope(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	runID := c.send(sid, "hi")
	waitIdle(t, s) // the whole run happened before anyone subscribed

	frames := c.subscribe(sid, 0).until("run_completed")
	want := []string{"run_started", "future_thing", "turn_started"}
	require.Equal(t, want, events(frames)[:3])
	tail := events(frames)[len(frames)-4:]
	require.Equal(t, []string{"text_complete", "usage_report", "turn_completed", "run_completed"}, tail)
	require.Equal(t, defaultText, textOf(t, frames))

	for i, f := range frames {
		require.Equal(t, strconv.Itoa(i+1), f.ID, "ids start at 1 and increase by one")
		id, rid, variant, p := f.env(t)
		require.EqualValues(t, i+1, id)
		require.Equal(t, runID, rid)
		require.Equal(t, runID, p["run_id"], "payloads carry run_id")
		require.NotEmpty(t, variant)
	}
	_, _, _, done := frames[len(frames)-1].env(t)
	assert.Equal(t, "completed", done["stop_reason"])
	assert.EqualValues(t, 1, done["total_turns"])
	u := done["total_usage"].(map[string]any)
	assert.Equal(t, u["prompt_tokens"].(float64)+u["completion_tokens"].(float64), u["total_tokens"])
}

func TestNoReplayWithoutLastEventID(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	c.send(sid, "first")
	waitIdle(t, s)
	st, b, _ := c.do("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
	require.Equal(t, http.StatusOK, st, string(b))

	// The late subscriber sees nothing of the finished run...
	live := c.subscribe(sid, -1)
	select {
	case f := <-live.frames:
		require.FailNow(t, "replayed without Last-Event-ID", "%+v", f)
	case <-time.After(100 * time.Millisecond):
	}
	// ...only what is published after it subscribed.
	run2 := c.send(sid, "second")
	frames := live.until("run_completed")
	first := frames[0]
	require.Equal(t, "run_started", first.Event)
	id, rid, _, _ := first.env(t)
	require.Equal(t, run2, rid)
	require.Greater(t, id, uint64(5), "ids keep counting across runs")
}

func TestEarlierRunsInRing(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	run1 := c.send(sid, "#sim text one")
	waitIdle(t, s)
	run2 := c.send(sid, "#sim text two")
	waitIdle(t, s)
	frames := c.subscribe(sid, 0).until("run_started")
	_, rid, _, _ := frames[0].env(t)
	require.Equal(t, run1, rid)
	st := c.subscribe(sid, 0)
	st.until("run_completed")
	second := st.until("run_completed")
	_, rid, _, _ = second[0].env(t)
	require.Equal(t, run2, rid)
	require.Equal(t, "two", textOf(t, second))
}

func TestGapDetected(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	c.send(sid, "#sim ring 3\n#sim text hello world")
	waitIdle(t, s)

	st := c.subscribe(sid, 0)
	gap := st.next()
	require.Equal(t, "gap_detected", gap.Event)
	require.Empty(t, gap.ID)
	var g map[string]any
	require.NoError(t, json.Unmarshal([]byte(gap.Data), &g))
	newest := g["newest_available_id"].(float64)
	assert.EqualValues(t, 0, g["requested_after_id"])
	assert.Equal(t, newest-2, g["oldest_available_id"])
	assert.Equal(t, "refresh_snapshot_then_resume", g["resume_hint"])

	// No replay follows: the next frame is the next run's first event.
	c.send(sid, "next")
	f := st.next()
	require.Equal(t, "run_started", f.Event)
	require.Equal(t, strconv.Itoa(int(newest)+1), f.ID)

	// A Last-Event-ID still in the ring replays without a gap.
	waitIdle(t, s)
	s.mu.Lock()
	last := s.logs[sid].lastID
	s.mu.Unlock()
	r := c.subscribe(sid, int(last)-1).next()
	require.Equal(t, strconv.Itoa(int(last)), r.ID)
	require.Equal(t, "run_completed", r.Event)
}

func TestKeepAliveOnIdleStream(t *testing.T) {
	_, base := newTestServer(t, Options{KeepAlive: 20 * time.Millisecond})
	c := newClient(t, base, "")
	st := c.subscribe(c.createSession(), -1)
	deadline := time.After(waitFor)
	for n := 0; n < 3; {
		select {
		case f := <-st.frames:
			require.Equal(t, "keepalive", f.Comment)
			n++
		case <-deadline:
			require.FailNow(t, "too few keep-alives")
		}
	}
}

func TestWireFormatVariants(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	text := "héllo wörld ✓ ünïcode — ok\nsecond line"
	c.send(sid, "#sim text-stream "+strings.ReplaceAll(text, "\n", `\n`))
	waitIdle(t, s)

	// Raw bytes: the variations are really on the wire.
	req, err := http.NewRequest("GET", base+"/v1/sessions/"+sid+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Last-Event-ID", "0")
	resp, err := c.hc.Do(req)
	require.NoError(t, err)
	var raw strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(raw.String(), "RunCompleted") {
		n, err := resp.Body.Read(buf)
		raw.Write(buf[:n])
		require.NoError(t, err)
	}
	require.NoError(t, resp.Body.Close())
	w := raw.String()
	assert.Contains(t, w, "\r\n")
	assert.Contains(t, w, "\ndata:{")
	assert.Contains(t, w, "\nid:")
	assert.Regexp(t, `data: \{"id":\d+,\r?\ndata: "session_id"`, w)

	frames := c.subscribe(sid, 0).until("run_completed")
	require.Equal(t, text, textOf(t, frames))
	for _, f := range frames {
		if f.Event == "text_delta" {
			_, _, _, p := f.env(t)
			assert.LessOrEqual(t, len(p["delta"].(string)), 8, "deltas are ~5 bytes")
		}
	}
}

func TestPiecesSplitInsideRune(t *testing.T) {
	ev := &event{id: 5, name: "text_delta", data: []byte(`{"id":5,"delta":"é"}`)}
	fr := frameBytes(ev)
	ps := pieces(ev, fr)
	require.Greater(t, len(ps), 3)
	require.Equal(t, string(fr), string(joinPieces(ps)))
	split := false
	for _, p := range ps {
		if len(p) > 0 && p[len(p)-1] == 0xC3 { // first byte of é
			split = true
		}
	}
	require.True(t, split, "a piece ends inside the multi-byte character")
	require.Len(t, pieces(&event{id: 2, name: "x", data: []byte("{}")}, fr), 1)
}

func joinPieces(ps [][]byte) []byte {
	var out []byte
	for _, p := range ps {
		out = append(out, p...)
	}
	return out
}

func TestDropAfter(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	c.send(sid, "#sim drop-after 3\n#sim text a much longer text than fifteen bytes")
	waitIdle(t, s)

	last := 0
	for conn := 1; conn <= 2; conn++ {
		st := c.subscribe(sid, last)
		for range 3 {
			f := st.next()
			id, err := strconv.Atoi(f.ID)
			require.NoError(t, err)
			require.Equal(t, last+1, id)
			last = id
		}
		err := st.ended()
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "connection %d is cut without a terminator", conn)
	}
	frames := c.subscribe(sid, last).until("run_completed")
	require.Equal(t, strconv.Itoa(last+1), frames[0].ID)
}

func TestStallAfter(t *testing.T) {
	s, base := newTestServer(t, Options{KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	first := c.subscribe(sid, -1)
	c.send(sid, "#sim stall-after 2\n#sim text stalled stream here")
	waitIdle(t, s)
	require.Equal(t, "run_started", first.next().Event)
	require.Equal(t, "future_thing", first.next().Event)
	select {
	case f := <-first.frames:
		require.FailNow(t, "a stalled stream wrote", "%+v", f)
	case <-time.After(150 * time.Millisecond): // 15 keep-alive intervals of silence
	}
	first.close()
	require.Error(t, first.ended())

	frames := c.subscribe(sid, 2).until("run_completed")
	require.Equal(t, "3", frames[0].ID)
}

func TestGarbageAndBigFrame(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	c.send(sid, "#sim garbage\n#sim bigframe 200000\n#sim text done")
	waitIdle(t, s)
	frames := c.subscribe(sid, 0).until("run_completed")

	var notJSON, twoVariants, noData, big int
	var text strings.Builder
	for _, f := range frames {
		if f.Event != "text_delta" {
			continue
		}
		if !f.HasData {
			noData++
			continue
		}
		var e struct {
			Event map[string]map[string]any `json:"event"`
		}
		if json.Unmarshal([]byte(f.Data), &e) != nil {
			notJSON++
			continue
		}
		if len(e.Event) != 1 {
			twoVariants++
			continue
		}
		if len(f.Data) == 200000 {
			big++
		}
		text.WriteString(e.Event["TextDelta"]["delta"].(string))
	}
	assert.Equal(t, []int{1, 1, 1, 1}, []int{notJSON, twoVariants, noData, big})
	assert.True(t, strings.HasSuffix(text.String(), "xdone"))
	assert.NotContains(t, text.String(), "GARBAGE")
}

func TestBigText(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	c.send(sid, "#sim bigtext 300000")
	frames := st.until("run_completed")
	waitIdle(t, s)
	require.Len(t, textOf(t, frames), 300000)
}
