package queue_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func TestRunKeyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"a", "build:42", "a.b", ".lead", "trail.", "a..b", "x:y:z.-_", "ABC-def_09"} {
		key, err := queue.RunKey(id)
		require.NoError(t, err, id)
		assert.Regexp(t, `^[-_=A-Za-z0-9]+$`, key, "a valid KV key without dots")
		back, err := queue.JobIDFromRunKey(key)
		require.NoError(t, err, key)
		assert.Equal(t, id, back)
	}
	key, err := queue.RunKey("build:42.a")
	require.NoError(t, err)
	assert.Equal(t, "build=3A42=2Ea", key)

	_, err = queue.RunKey("")
	require.ErrorContains(t, err, "must not be empty")
	_, err = queue.JobIDFromRunKey("ab=3")
	require.ErrorContains(t, err, "truncated escape")
	_, err = queue.JobIDFromRunKey("ab=ZZ")
	require.ErrorContains(t, err, "bad escape")
	_, err = queue.JobIDFromRunKey("a=20b")
	require.ErrorContains(t, err, "whitespace")
}

func TestRunStore(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	rs, err := queue.NewRunStore(e.ctx, e.js, e.cfg)
	require.NoError(t, err)

	_, _, err = rs.Get(e.ctx, "job:1.a")
	require.ErrorIs(t, err, queue.ErrRunNotFound)

	run := queue.NewRun(queue.RunRecord{JobID: "job:1.a", SessionID: "s1", Owner: "w1", Attempt: 1})
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransStarted))
	assert.Equal(t, queue.RunRunning, run.Stored)
	// The claim: a second worker creating the same job's record loses.
	rival := queue.NewRun(queue.RunRecord{JobID: "job:1.a", Owner: "w2"})
	require.ErrorIs(t, rs.Transition(e.ctx, rival, queue.TransStarted), queue.ErrRunExists)

	got, err := rs.GetRun(e.ctx, "job:1.a")
	require.NoError(t, err)
	assert.Equal(t, run.Rev, got.Rev)
	assert.Equal(t, "s1", got.Record.SessionID)
	assert.Equal(t, queue.RunRunning, got.Record.State)
	assert.False(t, got.Record.UpdatedAt.IsZero())

	// Compare-and-set: the first write wins, a stale revision loses.
	stale := *got
	got.Record.RunID, got.Record.LastEventID = "r1", 7
	require.NoError(t, rs.Transition(e.ctx, got, queue.TransProgress))
	assert.Greater(t, got.Rev, stale.Rev)
	stale.Record.Owner = "w2"
	require.ErrorIs(t, rs.Transition(e.ctx, &stale, queue.TransProgress), queue.ErrRevisionMismatch)

	cur, err := rs.GetRun(e.ctx, "job:1.a")
	require.NoError(t, err)
	assert.Equal(t, got.Rev, cur.Rev)
	assert.Equal(t, "w1", cur.Record.Owner)
	assert.EqualValues(t, 7, cur.Record.LastEventID)

	// Two workers racing to resume the same pause: exactly one wins.
	require.NoError(t, rs.Transition(e.ctx, cur, queue.TransPause))
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for _, owner := range []string{"a", "b", "c", "d"} {
		r := *cur
		wg.Go(func() {
			r.Record.Owner = owner
			err := rs.Transition(e.ctx, &r, queue.TransResume)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case assert.ErrorIs(t, err, queue.ErrRevisionMismatch):
				conflicts++
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1, wins)
	assert.Equal(t, 3, conflicts)

	// An illegal transition names both states and writes nothing.
	done, err := rs.GetRun(e.ctx, "job:1.a")
	require.NoError(t, err)
	require.NoError(t, rs.Transition(e.ctx, done, queue.TransFinish))
	err = rs.Transition(e.ctx, done, queue.TransPause)
	require.ErrorIs(t, err, queue.ErrIllegalTransition)
	require.EqualError(t, err, "run of job job:1.a: transition pause is not allowed from done (to paused)")
	after, err := rs.GetRun(e.ctx, "job:1.a")
	require.NoError(t, err)
	assert.Equal(t, done.Rev, after.Rev)

	// A new job with the same id (after the duplicate window) replaces a
	// record left done.
	again := queue.NewRun(queue.RunRecord{JobID: "job:1.a", Owner: "w3"})
	again.Rev, again.Stored = after.Rev, after.Stored
	require.NoError(t, rs.Transition(e.ctx, again, queue.TransStartFailed))
	assert.Equal(t, queue.RunStarting, again.Stored)

	// Other ids that differ only by escaping stay apart.
	for _, id := range []string{"a.b", "a:b", "a..b", ".a"} {
		require.NoError(t, rs.Transition(e.ctx, queue.NewRun(queue.RunRecord{JobID: id, Owner: id}), queue.TransStartFailed), id)
	}
	for _, id := range []string{"a.b", "a:b", "a..b", ".a"} {
		r, _, err := rs.Get(e.ctx, id)
		require.NoError(t, err, id)
		assert.Equal(t, id, r.Owner)
	}

	_, _, err = rs.Get(e.ctx, "bad id")
	require.ErrorContains(t, err, "whitespace")
}

// Every transition from every state: the legal ones lead where the state
// diagram says, the others are refused naming both states.
func TestRunTransitions(t *testing.T) {
	t.Parallel()
	states := []queue.RunState{"", queue.RunStarting, queue.RunRunning, queue.RunPaused, queue.RunDone}
	legal := map[queue.Transition]map[queue.RunState]queue.RunState{
		queue.TransStartFailed:   {"": queue.RunStarting, queue.RunDone: queue.RunStarting},
		queue.TransStarted:       {"": queue.RunRunning, queue.RunStarting: queue.RunRunning, queue.RunDone: queue.RunRunning},
		queue.TransProgress:      {queue.RunRunning: queue.RunRunning},
		queue.TransPause:         {queue.RunRunning: queue.RunPaused},
		queue.TransResume:        {queue.RunPaused: queue.RunRunning},
		queue.TransFinish:        {queue.RunStarting: queue.RunDone, queue.RunRunning: queue.RunDone, queue.RunPaused: queue.RunDone},
		queue.TransRequestCancel: {queue.RunStarting: queue.RunStarting, queue.RunRunning: queue.RunRunning},
	}
	for tr, from := range legal {
		for _, s := range states {
			got, err := tr.Target("j", s)
			if want, ok := from[s]; ok {
				assert.NoError(t, err, "%s from %q", tr, s)
				assert.Equal(t, want, got, "%s from %q", tr, s)
				continue
			}
			var te *queue.TransitionError
			if assert.ErrorAs(t, err, &te, "%s from %q", tr, s) {
				assert.Equal(t, s, te.From)
				assert.Equal(t, tr, te.Transition)
				assert.Contains(t, err.Error(), string(tr))
			}
		}
	}
	_, err := queue.Transition("explode").Target("j", queue.RunRunning)
	assert.ErrorContains(t, err, `unknown transition "explode"`)
}

func TestRunStoreNeedsSetup(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	_, err := queue.NewRunStore(e.ctx, e.js, queue.Config{Prefix: "nosuch"})
	require.ErrorContains(t, err, "nosuch_runs")
}

// A settled record expires with the results (a per-message TTL on its
// last write, checked against the revision like any update), so the runs
// bucket does not keep one record per job forever.
func TestSettledRunRecordExpires(t *testing.T) {
	e := setupEnv(t, queue.Config{ResultsMaxAge: 2 * time.Second})
	rs, err := queue.NewRunStore(e.ctx, e.js, queue.Config{ResultsMaxAge: 2 * time.Second})
	require.NoError(t, err)
	run := queue.NewRun(queue.RunRecord{JobID: "ttl-1", Owner: "w", SessionID: "s"})
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransStarted))
	stale := *run
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransProgress))
	// The finish is a compare-and-set too.
	require.ErrorIs(t, rs.Transition(e.ctx, &stale, queue.TransFinish), queue.ErrRevisionMismatch)
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransFinish))
	got, err := rs.GetRun(e.ctx, "ttl-1")
	require.NoError(t, err)
	assert.Equal(t, queue.RunDone, got.Stored)
	require.Eventually(t, func() bool {
		_, _, err := rs.Get(e.ctx, "ttl-1")
		return errors.Is(err, queue.ErrRunNotFound)
	}, 20*time.Second, 50*time.Millisecond, "the settled record expires")
	// A running record does not.
	live := queue.NewRun(queue.RunRecord{JobID: "ttl-2", Owner: "w"})
	require.NoError(t, rs.Transition(e.ctx, live, queue.TransStarted))
	_, _, err = rs.Get(e.ctx, "ttl-2")
	require.NoError(t, err)
}
