package faults

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// TestKeysUnderWorkerKill (scenario 16): conversations (session_key) and
// deploys limited to one at a time (concurrency_key env:prod, limit 1 in
// the stored policy) on 3 worker processes, one SIGKILLed twice while runs
// are going. Every job ends in exactly one result from exactly one run;
// each conversation ran in one session, which received its messages in
// order; no two deploys overlapped; and no lease is left held.
func TestKeysUnderWorkerKill(t *testing.T) {
	conversations, messages, deploys := load(3, 8), load(4, 6), load(6, 20)
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{})
	ctx := e.ctx
	store, err := queue.NewPolicyStore(ctx, e.js, queue.Config{})
	require.NoError(t, err)
	_, err = store.Set(ctx, []byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"},"concurrency":{"keys":{"env:prod":1}}}`))
	require.NoError(t, err)
	e.startWorkers(t, 3)

	var ids []string
	prompts := map[string][]string{} // session key -> prompts in order
	for m := range messages {
		for c := range conversations {
			id := fmt.Sprintf("conv%d-msg%d", c, m)
			key := fmt.Sprintf("thread-%d", c)
			p := fmt.Sprintf("[%s] #sim sleep %dms\n#sim text conversation %d, message %d", id, 100+100*((c+m)%4), c, m)
			prompts[key] = append(prompts[key], p)
			e.submit(t, schemas.Job{ID: id, Prompt: p, SessionKey: key, Timeout: "5m"})
			ids = append(ids, id)
		}
		for d := range deploys / messages {
			id := fmt.Sprintf("deploy-%d-%d", m, d)
			e.submit(t, schemas.Job{ID: id, Prompt: fmt.Sprintf("[%s] #sim sleep 150ms\n#sim text deployed", id), ConcurrencyKey: "env:prod", Timeout: "5m"})
			ids = append(ids, id)
		}
	}

	// Kill worker 1 twice while runs are going, and replace it.
	for k, at := range []int{len(ids) / 3, 2 * len(ids) / 3} {
		waitResults(ctx, t, e.js, at, 3*time.Minute)
		require.Eventually(t, func() bool { return e.sim.ActiveRuns() > 0 }, waitFor, 5*time.Millisecond, "runs in flight")
		e.workers[0].Kill(t)
		e.workers[0] = startWorker(t, workerOpts{name: fmt.Sprintf("w1-restart%d", k+1), natsURL: e.ns.URL(), agentURL: e.simURL,
			extra: []string{"--concurrency", "8"}})
	}
	e.settle(t, 5*time.Minute)
	byJob, f := e.count(t, ids)

	// Conversations: one session each, all messages received in order.
	for key, ps := range prompts {
		var session string
		for m := range ps {
			var c int
			_, err := fmt.Sscanf(key, "thread-%d", &c)
			require.NoError(t, err)
			r := byJob[fmt.Sprintf("conv%d-msg%d", c, m)]
			assert.Equal(t, schemas.StatusCompleted, r.Status, "%s message %d: %s", key, m, r.Stderr)
			assert.Equal(t, key, r.SessionKey)
			assert.Equal(t, fmt.Sprintf("conversation %d, message %d", c, m), r.Stdout, "%s message %d: its own text only", key, m)
			if m == 0 {
				session = r.SessionID
			}
			assert.Equal(t, session, r.SessionID, "%s message %d ran in another session", key, m)
		}
		require.Eventually(t, func() bool { return e.sim.RunState(session) == "idle" }, waitFor, 10*time.Millisecond)
		assert.Equal(t, ps, e.sim.UserMessages(session), "%s: the session received every message once, in order", key)
	}

	// Deploys: never two at once.
	var ds []schemas.Result
	for id, r := range byJob {
		if r.Status == schemas.StatusCompleted && strings.HasPrefix(id, "deploy-") {
			ds = append(ds, r)
		}
	}
	require.Len(t, ds, deploys/messages*messages, "every deploy completed")
	sort.Slice(ds, func(i, j int) bool { return ds[i].StartedAt.Before(ds[j].StartedAt) })
	overlaps := 0
	for i := 1; i < len(ds); i++ {
		if ds[i].StartedAt.Before(ds[i-1].FinishedAt) {
			overlaps++
			t.Errorf("deploy %s started at %s, before %s finished at %s", ds[i].JobID, ds[i].StartedAt, ds[i-1].JobID, ds[i-1].FinishedAt)
		}
	}

	// No lease is left held: a killed holder's slot was taken over.
	keys, err := queue.NewKeyStore(ctx, e.js, queue.Config{})
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		l, _, err := keys.Concurrency(ctx, "env:prod")
		assert.NoError(c, err)
		assert.Empty(c, l.Holders, "env:prod slots held at the end")
		for key := range prompts {
			s, _, err := keys.Session(ctx, key)
			assert.NoError(c, err)
			assert.Empty(c, s.Holder.Job, "%s held at the end", key)
		}
	}, waitFor, 50*time.Millisecond)

	f.Scenario, f.Elapsed = "16. conversations and one deploy at a time", time.Since(started)
	f.Load = fmt.Sprintf("%d conversations x %d messages (session_key) and %d deploys (concurrency_key env:prod, limit 1), 3 worker processes x 8",
		conversations, messages, deploys/messages*messages)
	f.Faults = fmt.Sprintf("SIGKILL a worker twice mid-load (AckWait 2s): %d overlapping deploys, every conversation in one session with its messages in order, no lease left held", overlaps)
	f.Command = "go test -race -run TestKeysUnderWorkerKill -v ./faults/"
	report(t, f)
}
