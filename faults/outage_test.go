package faults

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// netProxy is a TCP proxy in front of the agent server. Down cuts every
// open connection and resets new ones, the way a crashed host or a network
// partition looks to the worker (agentsim.SetDown alone leaves open event
// streams going).
type netProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newNetProxy(t *testing.T, targetURL string) (*netProxy, string) {
	t.Helper()
	u, err := url.Parse(targetURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &netProxy{ln: ln, target: u.Host, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p, "http://" + ln.Addr().String()
}

func (p *netProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			resetConn(c)
			continue
		}
		p.wg.Add(1)
		go p.pipe(c)
	}
}

func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// pipe copies both ways until either side closes or the proxy goes down.
func (p *netProxy) pipe(c net.Conn) {
	defer p.wg.Done()
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		resetConn(c)
		return
	}
	if !p.track(c, up) {
		resetConn(c)
		resetConn(up)
		return
	}
	defer p.untrack(c, up)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Closing both ends stops the other copy too.
		_ = dst.Close()
		_ = src.Close()
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

func (p *netProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *netProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// setDown starts (cutting every open connection) or ends an outage.
func (p *netProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			resetConn(c)
		}
	}
}

// TestAgentServerOutage: the agent server is unreachable for 10 s mid-load
// (open event streams cut, new connections reset), then back. The workers
// notice within their readiness check and stop pulling jobs; the jobs they
// pulled before that fail to start and are handed back with backoff (1s
// doubling), within the start budget (15m), not a number of deliveries, so
// none is dead-lettered; the rest wait in the stream. Runs in flight are
// followed again from their cursor and finish once.
func TestAgentServerOutage(t *testing.T) {
	n := load(30, 120)
	const outage = 10 * time.Second
	started := time.Now()
	ns := newNatsServer(t, natsConfig{})
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	prx, prxURL := newNetProxy(t, simURL)
	_, js := connect(t, ns.URL())
	ctx := testsupport.Context(t, 10*time.Minute)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{AckWait: 2 * time.Second}))
	var workers []*testsupport.Proc
	for i := range 2 {
		workers = append(workers, startWorker(t, workerOpts{name: fmt.Sprintf("w%d", i+1), natsURL: ns.URL(), agentURL: prxURL, extra: []string{"--concurrency", "8"}}))
	}
	jobs := makeJobs("outage", n, 3*time.Second)
	client := queue.NewClient(js, queue.Config{})
	// Eight jobs (half the slots) are running when the outage starts; the
	// rest arrives during it, so those jobs take the free slots and try to
	// start against a server that is gone.
	const first = 8
	submitAll(ctx, t, client, jobs[:first])
	waitResults(ctx, t, js, 2, 3*time.Minute)
	require.Eventually(t, func() bool { return sim.ActiveRuns() >= 2 }, waitFor, 5*time.Millisecond, "runs in flight")
	inFlight := sim.ActiveRuns()
	prx.setDown(true)
	submitAll(ctx, t, client, jobs[first:])
	downFor(t, outage)
	prx.setDown(false)

	f := settleAndCount(ctx, t, js, sim, jobs, 5*time.Minute)
	failedStarts := 0
	for _, w := range workers {
		failedStarts += strings.Count(w.Output(), "agent server unavailable; retrying")
		assert.Contains(t, w.Output(), "agent server unavailable: not taking jobs", "worker %s stopped pulling during the outage", w.Name)
	}
	dead, err := testsupport.ReadStream(ctx, js, "JETPILOT_DEAD", "")
	require.NoError(t, err)
	assert.Empty(t, dead, "nothing dead-lettered while retries remain")
	f.Scenario, f.Elapsed = "4. agent server outage", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (0-3s, tools; all but 8 submitted during the outage), 2 worker processes x 8 (defaults: pulls gated on the agent server's readiness, failed starts retried 1s doubling within a 15m start budget)", n)
	f.Faults = fmt.Sprintf("agent server unreachable for %s (%d runs in flight cut, new connections reset); %d start attempts failed before the gate closed, 0 dead letters", outage, inFlight, failedStarts)
	f.Command = "go test -race -run TestAgentServerOutage -v ./faults/"
	report(t, f)
}
