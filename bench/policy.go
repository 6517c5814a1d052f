package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// The two policy documents the policy scenario alternates between: an
// incident freeze (YAML, as schemas/examples/policy-freeze.yaml) and the
// normal production policy (YAML, as schemas/examples/policy-production.yaml),
// so every version is a real change of the tool rules, of the size an
// operator stores.
const (
	policyFreezeDoc = `schema: jetpilot.policy.v1
version: 1
tools:
  default: deny
  bare_prefixes: [stakpak]
  rules:
    - name: read-only
      match: {tools: [view, search_docs, search_memory, read_rulebook, local_code_search, get_all_tasks, get_task_details]}
      action: allow
    - name: freeze
      match: {tools: [run_command, run_command_async, create, str_replace]}
      action: approve
      approvers: {groups: [incident], quorum: 2, requester_may_approve: false}
approvers:
  alice: {key: UDBIHCGJROFB64VF5JHKJXUNFL77I57NJYYXAYJP3TKJMXDS7EK5IT4J, groups: [sre, incident]}
  carol: {key: UBYIQS4DBJU6JSEYI4CXXK2TNG37RTWBNIMFB7RRQSONXOLWDX5LNPIL, groups: [sre, incident]}
producers:
  ci-pipeline: {key: UC7ADKG7PLWNSDGWGM4IG6RS4QU4OUXTNSRRMVIM4M5RFEAZQ6OKYPCT}
decisions: signed
jobs:
  workdir_roots: [/srv/repos]
  models: [claude-sonnet-4-5]
  sandbox: required
  system_prompt: forbidden
  max_turns: 32
  max_timeout: 30m
  max_tokens: 500000
  max_paused: 50
concurrency:
  default: 1
`
	policyNormalDoc = `schema: jetpilot.policy.v1
version: 1
tools:
  default: approve
  bare_prefixes: [stakpak]
  rules:
    - name: read-only
      match: {tools: [view, search_docs, search_memory, read_rulebook, local_code_search, get_all_tasks, get_task_details]}
      action: allow
    - name: never-rm-rf
      match:
        tools: [run_command, run_command_async]
        args: {command: '.*\brm\s+(.*\s)?-(-recursive|-force|[a-zA-Z]*[rRf][a-zA-Z]*)\b.*'}
      action: deny
      reason: recursive or forced deletes are never run by an agent; ask a human to do it
    - name: prod-change
      match:
        tools: [run_command, run_command_async]
        args: {command: '.*\b(kubectl|helm|terraform)\b.*'}
      action: approve
      approvers: {groups: [sre], quorum: 2, requester_may_approve: false}
    - name: file-edits
      match: {tools: [create, str_replace]}
      action: approve
      approvers: {groups: [sre, platform]}
approvers:
  alice: {key: UDBIHCGJROFB64VF5JHKJXUNFL77I57NJYYXAYJP3TKJMXDS7EK5IT4J, groups: [sre]}
  bob: {key: UDKLKSM46CRZUPBOLCRPWX2N36DKGJE2J5Q4TED5J3WKW2M63NGQ6J6S, groups: [sre]}
  carol: {key: UBYIQS4DBJU6JSEYI4CXXK2TNG37RTWBNIMFB7RRQSONXOLWDX5LNPIL, groups: [sre, platform]}
  dave: {key: UBICANNIPDUMPPG37KHH32UIGY3VMGGN4Y64UQGTKUHUEABZBSQQ22LN, groups: [platform]}
producers:
  ci-pipeline: {key: UC7ADKG7PLWNSDGWGM4IG6RS4QU4OUXTNSRRMVIM4M5RFEAZQ6OKYPCT}
decisions: signed
jobs:
  workdir_roots: [/srv/repos]
  models: [claude-sonnet-4-5]
  sandbox: required
  system_prompt: forbidden
  max_turns: 64
  max_timeout: 2h
  max_tokens: 2000000
  max_paused: 200
`
)

// policyDoc is the document of update i: freeze, normal, freeze, ...
func policyDoc(i int) []byte {
	if i%2 == 0 {
		return []byte(policyFreezeDoc)
	}
	return []byte(policyNormalDoc)
}

// policyUpdateDeadline bounds the wait for one version to reach every
// watcher; propagation takes milliseconds, so missing it is a failure.
const policyUpdateDeadline = 10 * time.Second

// policySample is one run of the policy scenario.
type policySample struct {
	applied  []time.Duration // Set called -> the last worker applied the version
	setCall  []time.Duration // the Set call itself
	rawWatch []time.Duration // kv.Put called -> the last raw watcher had the revision
	versions []uint64        // the versions every worker applied, in order
}

func (p *PolicyPropagation) add(s policySample) {
	p.Applied.add(s.applied)
	p.SetCall.add(s.setCall)
	p.RawWatch.add(s.rawWatch)
	p.Versions = append(p.Versions, s.versions)
	p.RatioP50ToRawWatch.add(last(p.Applied.P50) / last(p.RawWatch.P50))
}

// arrival is watcher (or worker) i having revision rev at time at; err is
// a failed delivery (a worker's feed reporting an unreadable policy).
type arrival struct {
	i   int
	rev uint64
	at  time.Time
	err error
}

// arrivals collects what k watchers report. Senders never block for long:
// the channel holds every delivery a run can make, and a sender gives up
// once the run is over.
type arrivals struct {
	ch   chan arrival
	done chan struct{}
	once sync.Once
}

func newArrivals(k, updates int) *arrivals {
	return &arrivals{ch: make(chan arrival, k*(updates+4)), done: make(chan struct{})}
}

func (a *arrivals) send(x arrival) {
	select {
	case a.ch <- x:
	case <-a.done:
	}
}

func (a *arrivals) close() { a.once.Do(func() { close(a.done) }) }

// await returns when each of the k watchers has reported rev, with the
// time the last did. Any other revision, or a failed delivery, is an error:
// updates are sequential, so nothing else may arrive meanwhile.
func (a *arrivals) await(ctx context.Context, rev uint64, k int, what string) (time.Time, error) {
	deadline := time.NewTimer(policyUpdateDeadline)
	defer deadline.Stop()
	seen := make(map[int]bool, k)
	var last time.Time
	for len(seen) < k {
		select {
		case x := <-a.ch:
			switch {
			case x.err != nil:
				return time.Time{}, fmt.Errorf("%s %d, waiting for version %d: %w", what, x.i, rev, x.err)
			case x.rev != rev:
				return time.Time{}, fmt.Errorf("%s %d delivered version %d while version %d was awaited", what, x.i, x.rev, rev)
			case seen[x.i]:
				return time.Time{}, fmt.Errorf("%s %d delivered version %d twice", what, x.i, rev)
			}
			seen[x.i] = true
			if x.at.After(last) {
				last = x.at
			}
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("version %d reached %d of %d %ss within %s", rev, len(seen), k, what, policyUpdateDeadline)
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("version %d reached %d of %d %ss: %w", rev, len(seen), k, what, ctx.Err())
		}
	}
	return last, nil
}

// policyRun measures, on a fresh queue and policy bucket:
//
//   - raw watch (the baseline, first): k nats.go KV watchers of the policy
//     key, each on its own connection; per update, from just before kv.Put
//     to the last watcher receiving that revision;
//   - applied: k workers, each on its own connection with its own
//     PolicyStore and Options.Policies = worker.StoredPolicies(store); per
//     update, from just before PolicyStore.Set (what `jetpilot policy set`
//     calls: validate, read the current version, compare-and-set) to the
//     last worker having applied it.
//
// Both put the same documents on the same key of the same bucket, one
// update at a time. A worker's apply is timed without polling: its feed is
// StoredPolicies wrapped so that the time is taken once the worker's own
// deliver function (which stores the policy in force) has returned; each
// round then checks that every worker's Policy() reports the new version.
func (e *env) policyRun(ctx context.Context, tag string, k, updates int) (policySample, error) {
	cfg, cleanup, err := e.newQueue(ctx, tag, 0)
	if err != nil {
		return policySample{}, err
	}
	defer cleanup()
	kv, err := e.js.KeyValue(ctx, cfg.PolicyBucket())
	if err != nil {
		return policySample{}, fmt.Errorf("policy bucket: %w", err)
	}
	var out policySample
	out.rawWatch, err = e.rawPolicyWatch(ctx, kv, k, updates)
	if err != nil {
		return policySample{}, fmt.Errorf("raw KV watch: %w", err)
	}
	current := uint64(updates) // the raw phase stored revisions 1..updates

	store, err := queue.NewPolicyStore(ctx, e.js, cfg)
	if err != nil {
		return policySample{}, err
	}
	arr := newArrivals(k, updates)
	defer arr.close()
	ws, stop, err := e.policyWorkers(ctx, cfg, k, arr)
	if err != nil {
		return policySample{}, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	// Every worker has read the policy stored now before the clock runs.
	if _, err := arr.await(ctx, current, k, "worker"); err != nil {
		return policySample{}, fmt.Errorf("workers reading the initial policy: %w", err)
	}
	for i := range updates {
		doc := policyDoc(i)
		t0 := time.Now()
		res, err := store.Set(ctx, doc, queue.IfVersion(current))
		t1 := time.Now()
		if err != nil {
			return policySample{}, fmt.Errorf("update %d: %w", i+1, err)
		}
		last, err := arr.await(ctx, res.Version, k, "worker")
		if err != nil {
			return policySample{}, fmt.Errorf("update %d: %w", i+1, err)
		}
		for j, w := range ws {
			if p := w.Policy(); p.Version != res.Version || p.Source != policy.SourceStored {
				return policySample{}, fmt.Errorf("update %d: worker %d reports policy version %d (%s) after applying version %d",
					i+1, j, p.Version, p.Source, res.Version)
			}
		}
		out.applied = append(out.applied, last.Sub(t0))
		out.setCall = append(out.setCall, t1.Sub(t0))
		out.versions = append(out.versions, res.Version)
		current = res.Version
	}
	stopped = true
	if err := stop(); err != nil {
		return policySample{}, fmt.Errorf("stop workers: %w", err)
	}
	return out, nil
}

// rawPolicyWatch is the baseline: k raw nats.go KV watchers of the policy
// key, each on its own connection, and updates puts of the same documents
// the workers get; per put, from just before kv.Put to the last watcher
// receiving its revision.
func (e *env) rawPolicyWatch(ctx context.Context, kv jetstream.KeyValue, k, updates int) ([]time.Duration, error) {
	arr := newArrivals(k, updates)
	defer arr.close()
	var wg sync.WaitGroup
	var conns []*nats.Conn
	var watchers []jetstream.KeyWatcher
	wctx, cancel := context.WithCancel(ctx)
	defer func() {
		arr.close()
		for _, w := range watchers {
			_ = w.Stop()
		}
		cancel()
		wg.Wait()
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range k {
		nc, js, err := e.connect(fmt.Sprintf("raw-watch-%d", i))
		if err != nil {
			return nil, err
		}
		conns = append(conns, nc)
		wkv, err := js.KeyValue(ctx, kv.Bucket())
		if err != nil {
			return nil, fmt.Errorf("bind bucket: %w", err)
		}
		w, err := wkv.Watch(wctx, queue.PolicyKey)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		watchers = append(watchers, w)
		// The bucket is empty: the first thing a watcher delivers is the
		// end-of-initial-values marker, which says it is live.
		select {
		case ent, ok := <-w.Updates():
			if !ok || ent != nil {
				return nil, fmt.Errorf("watcher %d: expected the end of the initial values first", i)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		wg.Go(func() {
			for ent := range w.Updates() {
				if ent != nil {
					arr.send(arrival{i: i, rev: ent.Revision(), at: time.Now()})
				}
			}
		})
	}
	out := make([]time.Duration, 0, updates)
	for i := range updates {
		t0 := time.Now()
		rev, err := kv.Put(ctx, queue.PolicyKey, policyDoc(i))
		if err != nil {
			return nil, fmt.Errorf("put %d: %w", i+1, err)
		}
		last, err := arr.await(ctx, rev, k, "raw watcher")
		if err != nil {
			return nil, fmt.Errorf("put %d: %w", i+1, err)
		}
		out = append(out, last.Sub(t0))
	}
	return out, nil
}

// policyWorkers starts k workers on cfg, each on its own connection with
// its own PolicyStore, fed by worker.StoredPolicies. Each reports every
// version it has applied to arr. The workers run no jobs (nothing is
// published); their runner returns at once.
func (e *env) policyWorkers(ctx context.Context, cfg queue.Config, k int, arr *arrivals) ([]*worker.Worker, func() error, error) {
	type running struct {
		nc     *nats.Conn
		cancel context.CancelFunc
		done   chan error
	}
	var rs []running
	var once sync.Once
	var stopErr error
	stopAll := func() error {
		once.Do(func() {
			var errs []error
			for _, r := range rs {
				r.cancel()
			}
			for _, r := range rs {
				select {
				case err := <-r.done:
					errs = append(errs, err)
				case <-time.After(30 * time.Second):
					errs = append(errs, errors.New("worker did not stop within 30s"))
				}
				r.nc.Close()
			}
			stopErr = errors.Join(errs...)
		})
		return stopErr
	}
	var ws []*worker.Worker
	for i := range k {
		nc, js, err := e.connect(fmt.Sprintf("policy-worker-%d", i))
		if err != nil {
			_ = stopAll()
			return nil, nil, err
		}
		store, err := queue.NewPolicyStore(ctx, js, cfg)
		if err != nil {
			nc.Close()
			_ = stopAll()
			return nil, nil, err
		}
		feed := worker.StoredPolicies(store)
		timed := func(ctx context.Context, deliver func(*policy.Policy, error)) {
			feed(ctx, func(p *policy.Policy, err error) {
				deliver(p, err) // the worker stores the policy in force
				switch {
				case err != nil:
					arr.send(arrival{i: i, err: err})
				case p == nil:
					arr.send(arrival{i: i, err: errors.New("no policy is stored")})
				default:
					arr.send(arrival{i: i, rev: p.Version, at: time.Now()})
				}
			})
		}
		w, err := worker.New(ctx, js, cfg, instantRunner{}, worker.Options{
			Name:          fmt.Sprintf("bench-policy-w%d", i),
			Concurrency:   1,
			Logger:        discard,
			ShutdownGrace: 10 * time.Second,
			FetchWait:     time.Second,
			Policies:      timed,
		})
		if err != nil {
			nc.Close()
			_ = stopAll()
			return nil, nil, fmt.Errorf("new worker: %w", err)
		}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		rs = append(rs, running{nc: nc, cancel: cancel, done: done})
		ws = append(ws, w)
	}
	return ws, stopAll, nil
}
