package spawn

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEventStreamDecodes(t *testing.T) {
	t.Parallel()
	in := "" +
		": keepalive\n\n" +
		"id: 1\nevent: run_started\ndata: {\"id\":1,\"session_id\":\"s\",\"run_id\":\"r\",\"timestamp\":\"2025-01-02T03:04:05Z\",\"event\":{\"RunStarted\":{\"run_id\":\"r\"}}}\n\n" +
		// unknown event and variant: skipped
		"id: 2\nevent: future_thing\ndata: {\"id\":2,\"session_id\":\"s\",\"run_id\":\"r\",\"event\":{\"FutureThing\":{}}}\n\n" +
		// not JSON: skipped
		"id: 3\nevent: text_delta\ndata: {nope\n\n" +
		// two variants: skipped
		"id: 4\nevent: text_delta\ndata: {\"id\":4,\"event\":{\"TextDelta\":{},\"TextComplete\":{}}}\n\n" +
		// run_id null in the envelope, from the payload; id from the frame
		"id: 5\r\nevent: text_delta\r\ndata: {\"session_id\":\"s\",\"run_id\":null,\r\ndata: \"event\":{\"TextDelta\":{\"run_id\":\"r\",\"delta\":\"hé\"}}}\r\n\r\n" +
		// a name that does not match the variant: the variant wins
		"id: 6\nevent: text\ndata: {\"id\":6,\"run_id\":\"r\",\"event\":{\"TextDelta\":{\"delta\":\"x\"}}}\n\n" +
		// no id at all: skipped
		"event: text_delta\ndata: {\"event\":{\"TextDelta\":{\"delta\":\"x\"}}}\n\n" +
		"event: gap_detected\ndata: {\"requested_after_id\":3,\"oldest_available_id\":10,\"newest_available_id\":20,\"resume_hint\":\"refresh_snapshot_then_resume\"}\n\n" +
		"id: 7\nevent: run_completed\ndata: {\"id\":7,\"run_id\":\"r\",\"event\":{\"RunCompleted\":{\"run_id\":\"r\",\"total_turns\":2,\"total_usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7},\"stop_reason\":\"completed\"}}}\n\n"
	s := NewEventStream(io.NopCloser(strings.NewReader(in)), StreamOptions{})
	defer s.Close()

	ev, err := s.Next()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), ev.ID)
	assert.Equal(t, EventRunStarted, ev.Name)
	assert.Equal(t, "RunStarted", ev.Variant)
	assert.Equal(t, "s", ev.SessionID)
	assert.Equal(t, "r", ev.RunID)
	assert.Equal(t, time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), ev.Time)

	ev, err = s.Next()
	require.NoError(t, err)
	assert.Equal(t, uint64(5), ev.ID)
	assert.Equal(t, "r", ev.RunID)
	var td TextDelta
	require.NoError(t, ev.Decode(&td))
	assert.Equal(t, "hé", td.Delta)

	ev, err = s.Next()
	require.NoError(t, err)
	assert.Equal(t, uint64(6), ev.ID)
	assert.Equal(t, EventTextDelta, ev.Name)

	ev, err = s.Next()
	require.NoError(t, err)
	require.NotNil(t, ev.Gap)
	assert.Equal(t, EventGapDetected, ev.Name)
	assert.Equal(t, GapDetected{RequestedAfterID: 3, OldestAvailableID: 10, NewestAvailableID: 20, ResumeHint: "refresh_snapshot_then_resume"}, *ev.Gap)

	ev, err = s.Next()
	require.NoError(t, err)
	var rc RunCompleted
	require.NoError(t, ev.Decode(&rc))
	assert.Equal(t, RunCompleted{RunID: "r", TotalTurns: 2, TotalUsage: TokenUsage{3, 4, 7}, StopReason: "completed"}, rc)

	_, err = s.Next()
	require.ErrorIs(t, err, io.EOF)
	n, why := s.Skipped()
	assert.Equal(t, 4, n)
	assert.NotEmpty(t, why)
	assert.Equal(t, 1, s.KeepAlives())
}

func TestEventStreamActivity(t *testing.T) {
	t.Parallel()
	var calls int
	s := NewEventStream(io.NopCloser(strings.NewReader(": keepalive\n\n")), StreamOptions{OnActivity: func() { calls++ }})
	_, err := s.Next()
	require.ErrorIs(t, err, io.EOF)
	assert.Positive(t, calls)
}

func TestEventStreamOversizeKeepsGoing(t *testing.T) {
	t.Parallel()
	in := "id: 1\nevent: text_delta\ndata: {\"id\":1,\"event\":{\"TextDelta\":{\"run_id\":\"r\",\"delta\":\"" + strings.Repeat("a", 2000) + "\"}}}\n\n" +
		"id: 2\nevent: text_delta\ndata: {\"id\":2,\"event\":{\"TextDelta\":{\"run_id\":\"r\",\"delta\":\"b\"}}}\n\n"
	s := NewEventStream(io.NopCloser(strings.NewReader(in)), StreamOptions{MaxFrameBytes: 512})
	_, err := s.Next()
	var big *FrameTooLargeError
	require.ErrorAs(t, err, &big)
	assert.Equal(t, "1", big.ID)
	ev, err := s.Next()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), ev.ID)
}

// TestEnvelopeFastPathAgreesWithSlowPath: the fast envelope decoder either
// gives up (the slow path then decides) or decodes exactly what the slow
// path does, payload bytes included.
func TestEnvelopeFastPathAgreesWithSlowPath(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		data string
		fast bool // the fast path takes it
	}{
		"plain":               {`{"id":1,"session_id":"s","run_id":"r","timestamp":"2025-01-02T03:04:05Z","event":{"TextDelta":{"run_id":"r","delta":"hé"}}}`, true},
		"spaces":              {` { "id" : 2 , "event" : { "RunStarted" : { "run_id" : "r" } } } `, true},
		"unit variant null":   {`{"id":3,"event":{"RunStarted":null}}`, true},
		"escaped variant":     {`{"id":4,"event":{"Text\u0044elta":{"delta":"x"}}}`, false},
		"two variants":        {`{"id":5,"event":{"TextDelta":{},"TextComplete":{}}}`, false},
		"duplicate variant":   {`{"id":6,"event":{"TextDelta":{"delta":"a"},"TextDelta":{"delta":"b"}}}`, false},
		"no variant":          {`{"id":7,"event":{}}`, false},
		"event null":          {`{"id":8,"event":null}`, false},
		"event not an object": {`{"id":9,"event":"TextDelta"}`, false},
		"trailing data":       {`{"id":10,"event":{"TextDelta":{}}} trailing`, false},
		"string with brace":   {`{"id":11,"event":{"TextDelta":{"delta":"}, \"X\": {"}}}`, true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := Frame{Event: "text_delta", Data: []byte(c.data)}
			fast, ok := decodeEnvelope(f.Data)
			assert.Equal(t, c.fast, ok, "the fast path takes it")
			slow, serr := decodeEnvelopeSlow(f)
			if !ok {
				return
			}
			require.NoError(t, serr, "the slow path accepts what the fast path took")
			assert.Equal(t, slow.variant, fast.variant)
			assert.JSONEq(t, string(slow.payload), string(fast.payload))
			assert.Equal(t, slow.ID, fast.ID)
			assert.Equal(t, slow.SessionID, fast.SessionID)
			assert.Equal(t, slow.RunID, fast.RunID)
			assert.Equal(t, slow.Timestamp, fast.Timestamp)
		})
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	f := Frame{Event: "text_delta", HasID: true, ID: "7", Data: []byte(`{"id":7,"session_id":"0b6f6c1e-4a52-4b0e-9d4e-2f1d1c7e9a10","run_id":"7d1f3b2a-9c4e-4f6a-8b1d-3e2c1a0f9b8d","timestamp":"2025-01-02T03:04:05.123456Z","event":{"TextDelta":{"run_id":"7d1f3b2a-9c4e-4f6a-8b1d-3e2c1a0f9b8d","delta":"Hello from the simulator, "}}}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}
