package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// PolicyFeed delivers the fleet's stored policy until ctx is done: every
// version as it is stored, (nil, nil) while none is stored, and (nil, err)
// when the stored one cannot be read or does not parse. It returns when ctx
// is done. queue.PolicyStore's watch is the one workers use.
type PolicyFeed func(ctx context.Context, deliver func(*policy.Policy, error))

// errPolicyUnknown: the stored policy was not read yet.
var errPolicyUnknown = errors.New("the fleet policy was not read yet")

// Policy is the policy this worker applies now: the stored one, or the
// fallback while none is stored. Runs read it at every tool decision.
func (w *Worker) Policy() *policy.Policy {
	if p := w.pol.Load(); p != nil {
		return p
	}
	return w.opts.fallback
}

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
		old := w.Policy()
		w.pol.Store(p) // nil: none is stored, the fallback applies
		now := w.Policy()
		w.polGate.set(nil)
		w.m.PolicyVersion.Set(float64(now.Version))
		if old != now {
			w.log.Info("policy applied", "version", now.Version, "source", now.Source)
		}
	})
}

// recheck holds a human's accepts to the policy in force now: a call the
// policy came to deny while it waited (an incident freeze stored after the
// pause) is rejected with the rule's reason, whatever the human said.
func (w *Worker) recheck(decisions map[string]schemas.ToolDecision, pending []schemas.ToolCall, log *slog.Logger) map[string]schemas.ToolDecision {
	pol := w.Policy()
	for _, c := range pending {
		d, ok := decisions[c.ID]
		if !ok || d.Action != schemas.ActionAccept {
			continue
		}
		if v := pol.Evaluate(policy.Call{Name: c.Name, Arguments: c.Arguments}); v.Action == policy.Deny {
			decisions[c.ID] = schemas.ToolDecision{Action: schemas.ActionReject,
				Content: v.Reason + " (the policy changed while the call waited for a human)"}
			log.Warn("a human accepted a call the policy now denies; rejecting it", "tool_call_id", c.ID, "rule", v.Rule, "policy_version", v.Version)
		}
	}
	return decisions
}

// StoredPolicies is the PolicyFeed of the fleet's policy store: every
// version stored in the KV bucket, (nil, nil) while none is, and an error
// while the stored one cannot be read or parsed (or the watch is lost; the
// store then watches again, and the next delivery opens the gate).
func StoredPolicies(store *queue.PolicyStore) PolicyFeed {
	return func(ctx context.Context, deliver func(*policy.Policy, error)) {
		fn := func(p *policy.Policy, err error) {
			if errors.Is(err, queue.ErrNoPolicy) {
				deliver(nil, nil)
				return
			}
			deliver(p, err)
		}
		for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
			pw, err := store.Watch(ctx, fn)
			if err == nil {
				select {
				case <-ctx.Done():
				case <-pw.Done():
				}
				pw.Stop()
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if ctx.Err() != nil {
				return
			}
			deliver(nil, fmt.Errorf("watch the policy bucket: %w", err))
			if !sleep(ctx, wait) {
				return
			}
		}
	}
}

// policyHoldDelay is how long a message fetched while the policy could not
// be read waits before it is delivered again.
const policyHoldDelay = time.Second

// policyHold hands back a job or decision fetched while the stored policy
// cannot be read (a fetch that was waiting when it broke): nothing is
// decided under a policy the worker does not know.
func (w *Worker) policyHold(msg jetstream.Msg) *outcome {
	err := w.polGate.state()
	if err == nil {
		return nil
	}
	w.m.PolicyHolds.Inc()
	w.log.Warn("policy unreadable: handing the message back", "subject", msg.Subject(), "err", err)
	return &outcome{kind: outWait, delay: policyHoldDelay, err: err}
}
