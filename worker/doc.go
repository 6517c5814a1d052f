// Package worker is the jetpilot job loop: it pulls spawn jobs from the shared
// JetStream consumer, runs each through a session runner, and settles the
// message only after the job's outcome is durably published.
//
// What it owns:
//   - bounded concurrency: it never holds more job messages than it has free
//     slots, so a message never waits in a local buffer while its AckWait runs;
//   - the job message's lifetime: InProgress heartbeats (one ticker for all) while a session runs
//     (AckWait stays short so a dead worker's job comes back fast), NakWithDelay
//     with exponential backoff for transient failures before a run starts,
//     Term after a final outcome has been published for a job that cannot succeed;
//   - the order that keeps Principle 2 of DESIGN.md: publish result (and
//     dead letter, approval request) → record state → ack. A crash between any two
//     steps leads to a redelivery that re-attaches and republishes under the same
//     Nats-Msg-Id, which JetStream de-duplicates;
//   - recording every run in the jetpilot_runs KV bucket before it is followed, so
//     a redelivered job re-attaches to its run instead of starting a second one;
//   - graceful shutdown: stop pulling, let runs finish within the grace period,
//     then hand the rest back (see ShutdownMode);
//   - Prometheus metrics and the /healthz and /readyz endpoints.
//
// What it does not own: the agent-server protocol and the tool policy (package
// spawn), stream and consumer definitions and message encoding (package queue),
// job validation (package schemas).
package worker
