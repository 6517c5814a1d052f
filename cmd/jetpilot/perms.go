package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
)

// permissionErrors keeps the last permission violation the NATS server
// reported on the connection. The server reports them asynchronously: the
// request that was refused only times out ("context deadline exceeded"),
// which says nothing about the cause, so errors are explained with this.
type permissionErrors struct {
	mu   sync.Mutex
	last error
}

func (p *permissionErrors) set(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = err
}

// take returns the last violation (nil if none) and forgets it.
func (p *permissionErrors) take() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.last
	p.last = nil
	return err
}

// errorHandler logs the connection's asynchronous errors (instead of the
// nats.go default, which prints them unstructured to stderr) and records
// permission violations in perms.
func errorHandler(perms *permissionErrors, log *slog.Logger) nats.ErrHandler {
	return func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			perms.set(err)
			log.Error("NATS refused an operation: the NATS user lacks a permission", "err", err)
			return
		}
		log.Warn("NATS asynchronous error", "err", err)
	}
}

// explain adds the permission violation behind err, if the server reported one.
func (p *permissionErrors) explain(err error) error {
	if perr := p.take(); perr != nil {
		return fmt.Errorf("%w (the NATS server refused it: %v)", err, perr)
	}
	return err
}

// setupOrCheck creates or updates the streams and bucket. A worker whose
// NATS user may not manage streams (least privilege) works with streams an
// admin created with `jetpilot setup`: they only have to exist.
func setupOrCheck(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, perms *permissionErrors, log *slog.Logger) error {
	// Create what is missing, change nothing that exists: the limits are
	// `jetpilot setup`'s to set.
	err := queue.EnsureStreams(ctx, js, qcfg)
	if err == nil {
		return nil
	}
	perr := perms.take()
	if perr == nil {
		return fmt.Errorf("set up streams: %w", err)
	}
	if missing := missingStreams(ctx, js, qcfg); missing != nil {
		return fmt.Errorf("set up streams: the NATS user lacks a permission (%v), and %v; run `jetpilot setup` once as a NATS user that may manage streams, or grant the permission: %w", perr, missing, err)
	}
	log.Warn("NATS user may not create or update streams; using the existing ones as they are", "err", perr)
	return nil
}

// missingStreams reports the first stream or bucket that does not exist, or
// nil when all do.
func missingStreams(ctx context.Context, js jetstream.JetStream, qcfg queue.Config) error {
	for _, sc := range qcfg.StreamConfigs() {
		if sc.Name == qcfg.SchedulesStream() {
			continue // workers never read it (schedule add checks it)
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.Stream(sctx, sc.Name)
		cancel()
		if err != nil {
			return fmt.Errorf("stream %s is not available (%v)", sc.Name, err)
		}
	}
	for _, bucket := range []string{qcfg.RunsBucket(), qcfg.PolicyBucket()} {
		kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.KeyValue(kctx, bucket)
		cancel()
		if err != nil {
			return fmt.Errorf("KV bucket %s is not available (%v)", bucket, err)
		}
	}
	return nil
}

// probeStream is a stream name no stream has: a probe published with it as
// the expected stream is refused by the stream that would store it, so it
// checks the publish permission without leaving a message behind.
const probeStream = "jetpilot-permission-probe"

// checkPublish makes sure the NATS user may publish on every subject a
// worker publishes on. Without it a worker with too few permissions starts,
// runs jobs, and then can never settle one: its results time out and the
// jobs are redelivered forever.
func checkPublish(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, perms *permissionErrors) error {
	const probeJob = "permission-probe"
	for _, subject := range []string{
		qcfg.ResultSubject(probeJob), qcfg.DeadSubject(probeJob), qcfg.EventSubject(probeJob),
		qcfg.ApprovalSubject(probeJob), qcfg.ControlSubject(probeJob),
	} {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.PublishMsg(pctx, &nats.Msg{Subject: subject}, jetstream.WithExpectStream(probeStream))
		cancel()
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			continue // a stream answered (and refused the probe): publishing is allowed
		}
		if err == nil {
			return fmt.Errorf("check publish permission on %s: the probe was stored; is a stream named %s configured?", subject, probeStream)
		}
		if perr := perms.take(); perr != nil {
			return fmt.Errorf("the NATS user may not publish on %s, which a worker must (grant publish on %s): %v", subject, subject, perr)
		}
		return fmt.Errorf("check publish permission on %s: %w", subject, err)
	}
	return nil
}
