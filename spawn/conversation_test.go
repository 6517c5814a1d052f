package spawn

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// Three jobs of one conversation run in one session: each sees the
// earlier messages, and each result carries only its own run's text.
func TestContinueSessionKeepsTheConversation(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	prompts := []string{"#sim text first answer", "#sim text second answer", "#sim text third answer"}
	var session string
	for i, p := range prompts {
		spec := Spec{Policy: humanAsks, Job: schemas.Job{ID: "conv-" + string(rune('a'+i)), Prompt: p, SessionKey: "thread-1"}}
		if session != "" {
			spec.Continue = &Cursor{SessionID: session}
		}
		rec := newRecorder()
		res, err := r.Run(t.Context(), rec.attach(&spec))
		require.NoError(t, err)
		require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
		if session == "" {
			session = res.SessionID
		}
		require.Equal(t, session, res.SessionID, "job %d ran in another session", i)
		assert.Contains(t, res.Stdout, []string{"first", "second", "third"}[i])
		for _, other := range []string{"first", "second", "third"}[:i] {
			assert.NotContains(t, res.Stdout, other, "job %d's result has an earlier job's text", i)
		}
		if i > 0 {
			assert.Positive(t, rec.lastCursor().MessageBase, "a continued run records where its messages start")
		}
		require.Eventually(t, func() bool { return srv.RunState(session) == "idle" }, 10*time.Second, 10*time.Millisecond)
	}
	assert.Equal(t, prompts, srv.UserMessages(session), "the session received all three messages, in order")
	assert.Equal(t, 1, srv.SessionCount())
}

// A conversation whose session the server no longer has goes on in a
// new session and says so.
func TestContinueLostSessionStartsANewOne(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	gone := "5b7d7c0e-8f7a-4a51-9d0f-2f7f1f0b9a11"
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Continue: &Cursor{SessionID: gone},
		Job: schemas.Job{ID: "conv-lost", Prompt: "#sim text hi", SessionKey: "thread-2"}})
	require.NoError(t, err)
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.NotEqual(t, gone, res.SessionID)
	assert.Equal(t, 1, srv.SessionCount())
	require.NotEmpty(t, res.Warnings)
	assert.Contains(t, res.Warnings[0], "no longer has session "+gone)
}

// A conversation's session still running another run is ErrSessionBusy,
// transient, and nothing is sent.
func TestContinueBusySessionIsTransient(t *testing.T) {
	opts := testRunnerOptions()
	opts.SettleWait = 300 * time.Millisecond // how long it waits for the other run to end
	srv, _, r := newSimRunner(t, agentsim.Options{}, opts)
	first := NewControl()
	done := make(chan error, 1)
	rec := newRecorder()
	go func() {
		_, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Control: first, Job: schemas.Job{ID: "conv-long", Prompt: "#sim hang", SessionKey: "thread-3"}}))
		done <- err
	}()
	var cur Cursor
	select {
	case cur = <-rec.runID:
	case <-time.After(10 * time.Second):
		t.Fatal("the first run did not start")
	}
	_, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Continue: &Cursor{SessionID: cur.SessionID},
		Job: schemas.Job{ID: "conv-next", Prompt: "#sim text next", SessionKey: "thread-3"}})
	require.ErrorIs(t, err, ErrSessionBusy)
	assert.True(t, IsTransient(err))
	assert.Equal(t, 1, srv.RunsStarted())
	first.Cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled run did not end")
	}
}

// Steering reaches the running agent: the session's next turn reads it.
func TestSteerReachesTheRun(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	ctl := NewControl()
	require.ErrorIs(t, ctl.Steer(t.Context(), "too early"), ErrNotSteerable, "nothing follows the run yet")
	rec := newRecorder()
	done := make(chan Outcome, 1)
	go func() {
		out, err := r.Run(context.WithoutCancel(t.Context()), rec.attach(&Spec{Policy: allowOnly(t, "view"), Control: ctl,
			Job: schemas.Job{ID: "steered", Prompt: "#sim sleep 1s\n#sim tool-time 500ms\n#sim tool view {\"path\":\"a\"}\n#sim sleep 1s\n#sim text done"}}))
		if err != nil {
			out = &Outcome{}
			out.Stderr = err.Error()
		}
		done <- *out
	}()
	var cur Cursor
	select {
	case cur = <-rec.runID:
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not start")
	}
	require.NoError(t, ctl.Steer(t.Context(), "also check staging"))
	assert.Equal(t, 1, srv.Steers())
	var out Outcome
	select {
	case out = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the steered run did not end")
	}
	require.Equal(t, schemas.StatusCompleted, out.Status, out.Stderr)
	// The terminal checkpoint is written once the session leaves running.
	require.Eventually(t, func() bool { return srv.RunState(cur.SessionID) == "idle" }, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, srv.UserMessages(cur.SessionID), "also check staging")
	err := ctl.Steer(t.Context(), "too late")
	require.True(t, errors.Is(err, ErrNotSteerable), "after the run: %v", err)
}

// Guidance that comes while the agent thinks waits for a safe point: a
// proposal that needs a human pauses the run as usual, its calls are not
// skipped by a steering message, and the steer is refused in time.
func TestSteerWaitsForASafePoint(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	ctl := NewControl()
	rec := newRecorder()
	done := make(chan Outcome, 1)
	go func() {
		out, err := r.Run(context.WithoutCancel(t.Context()), rec.attach(&Spec{Policy: humanAsks, Control: ctl,
			Job: schemas.Job{ID: "steer-pause", Prompt: "#sim sleep 1s\n#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text done"}}))
		if err != nil {
			out = &Outcome{}
			out.Stderr = err.Error()
		}
		done <- *out
	}()
	select {
	case <-rec.runID:
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not start")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	err := ctl.Steer(ctx, "use the blue cluster")
	require.ErrorIs(t, err, ErrNotSteerable, "no safe point: the agent thought, then waited for a human")
	var out Outcome
	select {
	case out = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the run did not pause")
	}
	require.Equal(t, schemas.StatusPaused, out.Status, out.Stderr)
	require.NotNil(t, out.PauseReason)
	assert.Len(t, out.PauseReason.PendingToolCalls, 1)
	assert.Zero(t, srv.Steers(), "no steering message reached the server while the proposal waited")
}

// A conversation's job re-attached with no run id recorded (a crash
// between the send and its record): never sent, it is sent now; sent, its
// run is followed, never started again, and its text is its own.
func TestResumeSharedSessionWithoutRunID(t *testing.T) {
	srv, c, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	first, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "rs-1", Prompt: "#sim text first", SessionKey: "thread-rs"}})
	require.NoError(t, err)
	require.Equal(t, schemas.StatusCompleted, first.Status)
	session := first.SessionID
	require.Eventually(t, func() bool { return srv.RunState(session) == "idle" }, 10*time.Second, 10*time.Millisecond)

	// Sent, crashed before the run id was recorded: a first runner starts
	// the run and is stopped; a second one re-attaches with the cursor as
	// recorded before the send.
	rec := newRecorder()
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = r.Run(ctx, rec.attach(&Spec{Policy: humanAsks, Continue: &Cursor{SessionID: session},
			Job: schemas.Job{ID: "rs-2", Prompt: "#sim sleep 1s\n#sim text second", SessionKey: "thread-rs"}}))
	}()
	var cur Cursor
	select {
	case cur = <-rec.runID:
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not start")
	}
	stop()
	<-done
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Resume: &Cursor{SessionID: session, MessageBase: cur.MessageBase},
		Job: schemas.Job{ID: "rs-2", Prompt: "#sim sleep 1s\n#sim text second", SessionKey: "thread-rs"}})
	require.NoError(t, err)
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.Equal(t, cur.RunID, res.RunID, "the run that was sent, followed")
	assert.Equal(t, "second", res.Stdout)
	assert.Equal(t, 2, srv.RunsStarted(), "never started twice")

	// Never sent: sent now, with the job's key.
	require.Eventually(t, func() bool { return srv.RunState(session) == "idle" }, 10*time.Second, 10*time.Millisecond)
	page, err := c.Messages(t.Context(), session, 1, 0)
	require.NoError(t, err)
	base := page.Total // what the session had before this job's send
	res, err = r.Run(t.Context(), &Spec{Policy: humanAsks, Resume: &Cursor{SessionID: session, MessageBase: base},
		Job: schemas.Job{ID: "rs-3", Prompt: "#sim text third", SessionKey: "thread-rs"}})
	require.NoError(t, err)
	require.Equal(t, schemas.StatusCompleted, res.Status, "%s %v", res.Stderr, res.Warnings)
	assert.Equal(t, "third", res.Stdout)
	assert.Equal(t, 3, srv.RunsStarted())
}
