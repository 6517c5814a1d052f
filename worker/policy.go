package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetpilot-dev/jetpilot/policy"
)

// PolicyFeed delivers the fleet's stored policy until ctx is done: every
// version as it is stored, (nil, nil) while none is stored, and (nil, err)
// when the stored one cannot be read or does not parse. It returns when ctx
// is done. queue.PolicyStore's watch is the one workers use.
type PolicyFeed func(ctx context.Context, deliver func(*policy.Policy, error))

// errPolicyUnknown: the stored policy was not read yet.
var errPolicyUnknown = errors.New("the fleet policy was not read yet")

// policyInForce is the policy this worker applies now: the stored one, or
// the fallback while none is stored. Runs read it at every tool decision.
func (w *Worker) policyInForce() *policy.Policy {
	if p := w.pol.Load(); p != nil {
		return p
	}
	return w.opts.fallback
}

// Policy is the policy the worker applies now.
func (w *Worker) Policy() *policy.Policy { return w.policyInForce() }

// PolicyReady is nil while the worker has a policy to apply, else why it
// takes no work: the stored policy cannot be read or does not parse. A
// worker never falls back to a wider policy than the one stored. /readyz
// reports it.
func (w *Worker) PolicyReady() error { return w.polGate.state() }

// watchPolicy applies every version the feed delivers until ctx is done.
// While the stored policy cannot be read, the pull loops take no work; runs
// already going keep the last version read.
func (w *Worker) watchPolicy(ctx context.Context, feed PolicyFeed) {
	feed(ctx, func(p *policy.Policy, err error) {
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if w.polGate.set(fmt.Errorf("read the fleet policy: %w", err)) {
				w.log.Error("the fleet policy cannot be read: not taking work until it can", "err", err)
			}
			return
		}
		old := w.policyInForce()
		w.pol.Store(p) // nil: none is stored, the fallback applies
		now := w.policyInForce()
		w.polGate.set(nil)
		w.m.PolicyVersion.Set(float64(now.Version))
		if old != now {
			w.log.Info("policy applied", "version", now.Version, "source", now.Source)
		}
	})
}
