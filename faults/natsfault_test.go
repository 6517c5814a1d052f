package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// TestNATSRestart: the one nats-server (file store) is SIGKILLed mid-load
// and started again on the same port and store. The worker processes
// reconnect by themselves; no job is lost or answered twice.
func TestNATSRestart(t *testing.T) {
	n := load(40, 200)
	restarts := load(1, 2)
	started := time.Now()
	ns := newNatsServer(t, natsConfig{})
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, ns.URL())
	ctx := testsupport.Context(t, 10*time.Minute)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{AckWait: 2 * time.Second}))
	var workers []*testsupport.Proc
	for i := range 2 {
		workers = append(workers, startWorker(t, workerOpts{name: fmt.Sprintf("w%d", i+1), natsURL: ns.URL(), agentURL: simURL, extra: []string{"--concurrency", "8"}}))
	}
	jobs := makeJobs("restart", n, 1500*time.Millisecond)
	submitAll(ctx, t, queue.NewClient(js, queue.Config{}), jobs)

	for k := range restarts {
		waitResults(ctx, t, js, (k+1)*n/(restarts+2), 3*time.Minute)
		require.Eventually(t, func() bool { return sim.ActiveRuns() > 0 }, waitFor, 5*time.Millisecond, "runs in flight")
		ns.kill(t)
		// Down long enough for heartbeats, publishes and fetches to fail.
		downFor(t, 2*time.Second)
		ns.start(t)
	}

	f := settleAndCount(ctx, t, js, sim, jobs, 5*time.Minute)
	for _, w := range workers {
		assert.True(t, w.Running(), "worker survived the restart")
		assert.Contains(t, w.Output(), "NATS reconnected", "worker reconnected by itself")
	}
	f.Scenario, f.Elapsed = "2. NATS restart", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (0-1.5s, tools), 2 worker processes x 8", n)
	f.Faults = fmt.Sprintf("SIGKILL the nats-server (file store) %dx mid-load, 2s down, restart", restarts)
	f.Command = "go test -race -run TestNATSRestart -v ./faults/"
	report(t, f)
}

// downFor lets a fault last d. It is the fault's duration, not a stand-in
// for synchronisation: nothing is waited on.
func downFor(t *testing.T, d time.Duration) {
	t.Helper()
	<-time.After(d)
}

// TestNATSCluster: three nats-server processes clustered on loopback,
// streams and KV with 3 replicas. The JOBS stream leader is SIGKILLed
// mid-load and brought back later. No job is lost or answered twice.
func TestNATSCluster(t *testing.T) {
	n := load(40, 200)
	started := time.Now()
	cports := []int{testsupport.FreePort(t), testsupport.FreePort(t), testsupport.FreePort(t)}
	var servers []*natsServer
	for i := range 3 {
		servers = append(servers, newNatsServer(t, natsConfig{name: fmt.Sprintf("n%d", i+1), clusterPort: cports[i], routes: cports}))
	}
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.URL())
	}
	url := strings.Join(urls, ",")
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, url)
	ctx := testsupport.Context(t, 10*time.Minute)
	qcfg := queue.Config{Replicas: 3, AckWait: 2 * time.Second}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		assert.NoError(c, queue.Setup(sctx, js, qcfg))
	}, waitFor, 200*time.Millisecond, "set up R3 streams once the cluster has a meta leader")

	var workers []*testsupport.Proc
	for i := range 3 {
		workers = append(workers, startWorker(t, workerOpts{name: fmt.Sprintf("w%d", i+1), natsURL: url, agentURL: simURL,
			extra: []string{"--concurrency", "8", "--replicas", "3"}}))
	}
	jobs := makeJobs("cluster", n, 1500*time.Millisecond)
	submitAll(ctx, t, queue.NewClient(js, queue.Config{}), jobs)

	waitResults(ctx, t, js, n/4, 3*time.Minute)
	leader := streamLeader(ctx, t, js, "JETPILOT_JOBS")
	var victim *natsServer
	for _, s := range servers {
		if s.name == leader {
			victim = s
		}
	}
	require.NotNil(t, victim, "leader %q is one of ours", leader)
	victim.kill(t)
	require.Eventually(t, func() bool {
		l := streamLeaderNow(ctx, js, "JETPILOT_JOBS")
		return l != "" && l != leader
	}, waitFor, 50*time.Millisecond, "a new JOBS leader is elected")
	waitResults(ctx, t, js, n*3/5, 3*time.Minute)
	victim.start(t)

	f := settleAndCount(ctx, t, js, sim, jobs, 5*time.Minute)
	for _, w := range workers {
		assert.True(t, w.Running(), "worker survived the leader loss")
	}
	f.Scenario, f.Elapsed = "3. NATS cluster", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (0-1.5s, tools), 3 worker processes x 8, R3 streams and KV", n)
	f.Faults = "SIGKILL the JOBS stream leader mid-load, restart it later"
	f.Command = "go test -race -run TestNATSCluster -v ./faults/"
	report(t, f)
}

// streamLeader is the name of the server leading stream.
func streamLeader(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	var leader string
	require.Eventually(t, func() bool {
		leader = streamLeaderNow(ctx, js, stream)
		return leader != ""
	}, waitFor, 50*time.Millisecond, "stream %s has a leader", stream)
	return leader
}

func streamLeaderNow(ctx context.Context, js jetstream.JetStream, stream string) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}
