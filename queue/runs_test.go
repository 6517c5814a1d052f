package queue_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func TestRunKeyRoundTrip(t *testing.T) {
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
	e := setupEnv(t, queue.Config{})
	rs, err := queue.NewRunStore(e.ctx, e.js, e.cfg)
	require.NoError(t, err)

	_, _, err = rs.Get(e.ctx, "job:1.a")
	require.ErrorIs(t, err, queue.ErrRunNotFound)

	rec := queue.RunRecord{JobID: "job:1.a", SessionID: "s1", State: queue.RunStarting, Owner: "w1", Attempt: 1}
	rev, err := rs.Create(e.ctx, rec)
	require.NoError(t, err)
	_, err = rs.Create(e.ctx, rec)
	require.ErrorIs(t, err, queue.ErrRunExists)

	got, grev, err := rs.Get(e.ctx, "job:1.a")
	require.NoError(t, err)
	assert.Equal(t, rev, grev)
	assert.Equal(t, "s1", got.SessionID)
	assert.Equal(t, "job:1.a", got.JobID)
	assert.False(t, got.UpdatedAt.IsZero())

	// Compare-and-set: the first update wins, a stale revision loses.
	got.RunID, got.State, got.LastEventID = "r1", queue.RunRunning, 7
	rev2, err := rs.Update(e.ctx, got, grev)
	require.NoError(t, err)
	assert.Greater(t, rev2, grev)
	got.Owner = "w2"
	_, err = rs.Update(e.ctx, got, grev)
	require.ErrorIs(t, err, queue.ErrRevisionMismatch)

	cur, rev3, err := rs.Get(e.ctx, "job:1.a")
	require.NoError(t, err)
	assert.Equal(t, rev2, rev3)
	assert.Equal(t, "w1", cur.Owner)
	assert.EqualValues(t, 7, cur.LastEventID)

	// Two workers racing to update from the same revision: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for _, owner := range []string{"a", "b", "c", "d"} {
		wg.Go(func() {
			r := cur
			r.Owner = owner
			_, err := rs.Update(e.ctx, r, rev3)
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

	_, err = rs.Put(e.ctx, queue.RunRecord{JobID: "job:1.a", State: queue.RunDone})
	require.NoError(t, err)
	_, err = rs.Put(e.ctx, queue.RunRecord{JobID: "job:1.a", State: "exploded"})
	require.ErrorContains(t, err, `state must be starting, running, paused or done, got "exploded"`)

	// Other ids that differ only by escaping stay apart.
	for _, id := range []string{"a.b", "a:b", "a..b", ".a"} {
		_, err := rs.Create(e.ctx, queue.RunRecord{JobID: id, State: queue.RunStarting, Owner: id})
		require.NoError(t, err, id)
	}
	for _, id := range []string{"a.b", "a:b", "a..b", ".a"} {
		r, _, err := rs.Get(e.ctx, id)
		require.NoError(t, err, id)
		assert.Equal(t, id, r.Owner)
	}

	require.NoError(t, rs.Delete(e.ctx, "job:1.a"))
	_, _, err = rs.Get(e.ctx, "job:1.a")
	require.ErrorIs(t, err, queue.ErrRunNotFound)
	// A deleted run can be created again.
	_, err = rs.Create(e.ctx, rec)
	require.NoError(t, err)

	_, _, err = rs.Get(e.ctx, "bad id")
	require.ErrorContains(t, err, "whitespace")
}

func TestRunStoreNeedsSetup(t *testing.T) {
	e := setupEnv(t, queue.Config{})
	_, err := queue.NewRunStore(e.ctx, e.js, queue.Config{Prefix: "nosuch"})
	require.ErrorContains(t, err, "nosuch_runs")
}
