package worker

import (
	"context"
	"errors"
	"sync"
	"time"
)

// How often the agent gate asks the runner whether its agent server takes
// work: often while it is down (a restarted server's new token is picked up
// within a second of reaching the token file), rarely while it is up.
const (
	agentCheckUp   = 5 * time.Second
	agentCheckDown = time.Second
	agentCheckWait = 5 * time.Second
)

// errAgentUnknown: the agent server was not checked yet.
var errAgentUnknown = errors.New("agent server not checked yet")

// agentGate holds the pull loops while the agent server is unreachable or
// refuses the token: a job pulled then could only be handed back, and every
// such delivery used to count towards dead-lettering it. Jobs wait in the
// stream instead, where waiting costs nothing.
type agentGate struct {
	mu   sync.Mutex
	err  error         // nil: open
	open chan struct{} // closed while the gate is open
}

// newGate makes a gate closed with why, or open when why is nil. The
// policy gate (watchPolicy) is one too.
func newGate(why error) *agentGate {
	g := &agentGate{open: make(chan struct{}), err: why}
	if why == nil {
		close(g.open)
	}
	return g
}

// set opens the gate (err nil) or closes it with the reason; it reports
// whether the state changed.
func (g *agentGate) set(err error) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	wasOpen := g.err == nil
	g.err = err
	switch {
	case err == nil && !wasOpen:
		close(g.open)
	case err != nil && wasOpen:
		g.open = make(chan struct{})
	}
	return wasOpen != (err == nil)
}

// state is nil while the gate is open, else why it is closed.
func (g *agentGate) state() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// wait blocks until the gate is open or ctx is done; it reports whether the
// gate is open.
func (g *agentGate) wait(ctx context.Context) bool {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchAgent keeps the gate in step with the runner's agent server until ctx
// is done.
func (w *Worker) watchAgent(ctx context.Context, rr ReadyRunner) {
	for {
		cctx, cancel := context.WithTimeout(ctx, agentCheckWait)
		err := rr.Ready(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.m.setAgentUp(err)
		if w.gate.set(err) {
			if err != nil {
				w.log.Warn("agent server unavailable: not taking jobs until it is back", "err", err)
			} else {
				w.log.Info("agent server available: taking jobs")
			}
		}
		every := agentCheckUp
		if err != nil {
			every = agentCheckDown
		}
		if !sleep(ctx, every) {
			return
		}
	}
}

// AgentReady is nil while the worker takes jobs, else why it does not: its
// agent server is unreachable or refuses the token. /readyz reports it.
func (w *Worker) AgentReady() error { return w.gate.state() }

// closedUnless is why when cond holds, else nil (an open gate).
func closedUnless(cond bool, why error) error {
	if cond {
		return why
	}
	return nil
}
