package spawn

import (
	"context"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// The whole suite runs with DirectEventStreams (newTestClient); these tests
// also check that the direct path is the one taken.
func newDirectRunner(t *testing.T, simOpts agentsim.Options, opts RunnerOptions) (*agentsim.Server, *Runner) {
	t.Helper()
	srv, base := agentsimtest.New(t, simOpts)
	c, err := NewClient(ClientOptions{BaseURL: base, Token: simOpts.Token, DirectEventStreams: true})
	require.NoError(t, err)
	require.NotNil(t, c.direct)
	return srv, NewRunner(c, opts)
}

func TestDirectEventStreamsRun(t *testing.T) {
	srv, r := newDirectRunner(t, agentsim.Options{Token: "tok"}, testRunnerOptions())
	text := "streamed over its own connection — ünïcödé ✓"
	res, err := r.Run(t.Context(), &Spec{Job: schemas.Job{ID: "direct", Prompt: "#sim drop-after 3\n#sim text " + text}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, text, res.Stdout)
	evs := requestsTo(srv, http.MethodGet, "/events")
	require.GreaterOrEqual(t, len(evs), 2, "a dropped stream is reopened")
	assert.Equal(t, "Bearer tok", evs[0].Header.Get("Authorization"))
	assert.Equal(t, "text/event-stream", evs[0].Header.Get("Accept"))
	assert.Equal(t, "0", evs[0].Header.Get("Last-Event-ID"))
}

func TestDirectEventStreamsStallAndCancel(t *testing.T) {
	opts := testRunnerOptions()
	opts.StallTimeout = 300 * time.Millisecond
	srv, r := newDirectRunner(t, agentsim.Options{}, opts)
	res, err := r.Run(t.Context(), &Spec{Job: schemas.Job{ID: "stall", Prompt: "#sim stall-after 3\n#sim text stalled and replaced"}})
	require.NoError(t, err)
	assert.Equal(t, "stalled and replaced", res.Stdout)
	assert.GreaterOrEqual(t, len(requestsTo(srv, http.MethodGet, "/events")), 2)

	// A held run: cancelling the caller's context unblocks the read at once.
	rec := newRecorder()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	streams := len(requestsTo(srv, http.MethodGet, "/events"))
	go func() {
		select {
		case <-rec.runID:
			// Cancel once the held run's event stream is open (bounded).
			deadline := time.Now().Add(10 * time.Second)
			for len(requestsTo(srv, http.MethodGet, "/events")) <= streams && time.Now().Before(deadline) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err = r.Run(ctx, rec.attach(&Spec{Job: schemas.Job{ID: "hang", Prompt: "#sim hang"}}))
	require.ErrorIs(t, err, context.Canceled)
	var ce *CursorError
	require.ErrorAs(t, err, &ce)
	require.NoError(t, r.CancelRun(t.Context(), ce.Cursor))
}

// heldReadLoops is how many net/http connection readers (one per pooled or
// busy client connection, with a writer beside it) exist while n runs are
// held open.
func heldReadLoops(t *testing.T, direct bool, n int) int {
	srv, base := agentsimtest.New(t, agentsim.Options{})
	c, err := NewClient(ClientOptions{BaseURL: base, DirectEventStreams: direct})
	require.NoError(t, err)
	r := NewRunner(c, testRunnerOptions())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, n)
	before := countReadLoops(t) // other tests' idle connections
	for i := range n {
		go func() {
			_, err := r.Run(ctx, &Spec{Job: schemas.Job{ID: fmt.Sprintf("held-%v-%d", direct, i), Prompt: "#sim hang"}})
			done <- err
		}()
	}
	require.Eventually(t, func() bool { return srv.ActiveRuns() == n }, 10*time.Second, 10*time.Millisecond)
	// Every held run's event stream open, and the connection readers
	// settled: those of the surplus pool connections the start-up calls
	// used exit a moment after the pool closes them. Settled is the same
	// count at two ticks in a row.
	require.Eventually(t, func() bool { return len(requestsTo(srv, http.MethodGet, "/events")) >= n }, 10*time.Second, 10*time.Millisecond)
	prev := -1
	require.Eventually(t, func() bool {
		cur := readLoops()
		settled := cur == prev
		prev = cur
		return settled
	}, 10*time.Second, 50*time.Millisecond)
	got := countReadLoops(t) - before
	cancel()
	for range n {
		require.ErrorIs(t, <-done, context.Canceled)
	}
	c.hc.CloseIdleConnections()
	return got
}

// blockedIn reports whether a goroutine whose stack holds fn is blocked
// (not running or runnable).
func blockedIn(fn string) bool {
	var sb strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&sb, 2); err != nil {
		return false
	}
	for _, g := range strings.Split(sb.String(), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(g, fn) && !strings.Contains(header, "[running") && !strings.Contains(header, "[runnable") {
			return true
		}
	}
	return false
}

func countReadLoops(t *testing.T) int {
	var sb strings.Builder
	require.NoError(t, pprof.Lookup("goroutine").WriteTo(&sb, 2))
	return strings.Count(sb.String(), "net/http.(*persistConn).readLoop(")
}

// readLoops is countReadLoops for a wait condition (-1 if the dump fails).
func readLoops() int {
	var sb strings.Builder
	if pprof.Lookup("goroutine").WriteTo(&sb, 2) != nil {
		return -1
	}
	return strings.Count(sb.String(), "net/http.(*persistConn).readLoop(")
}

func TestDirectEventStreamsNeedNoTransportGoroutines(t *testing.T) {
	// More held runs than the pool keeps idle connections, so the two
	// ways differ by more than the pool.
	const n = 2 * defaultMaxIdleConns
	var viaClient, direct int
	t.Run("via client", func(t *testing.T) { viaClient = heldReadLoops(t, false, n) })
	t.Run("direct", func(t *testing.T) { direct = heldReadLoops(t, true, n) })
	// Via the client every held stream pins a connection with its readLoop
	// and writeLoop; direct streams pin none (the pool keeps at most
	// MaxIdleConnsPerHost idle connections of the other calls).
	assert.GreaterOrEqual(t, viaClient, n*3/4, "connection readers via http.Client")
	assert.LessOrEqual(t, direct, defaultMaxIdleConns, "connection readers with direct streams")
}

func TestDirectEventStreamsCloseUnblocksNext(t *testing.T) {
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprint("direct=", direct), func(t *testing.T) {
			base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte(": hello\n\n"))
				w.(http.Flusher).Flush()
				<-r.Context().Done() // an idle stream
			})
			c, err := NewClient(ClientOptions{BaseURL: base, DirectEventStreams: direct})
			require.NoError(t, err)
			require.Equal(t, direct, c.direct != nil)
			s, err := c.Events(t.Context(), "s1", nil)
			require.NoError(t, err)
			next := make(chan error, 1)
			go func() {
				_, err := s.Next()
				next <- err
			}()
			// Close while Next is blocked reading the idle stream.
			require.Eventually(t, func() bool { return blockedIn("spawn.(*EventStream).Next(") }, 5*time.Second, time.Millisecond)
			closed := make(chan struct{})
			go func() {
				_ = s.Close()
				close(closed)
			}()
			select {
			case err := <-next:
				require.Error(t, err)
			case <-time.After(5 * time.Second):
				t.Fatal("Next still blocked after Close")
			}
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("Close blocked")
			}
		})
	}
}
