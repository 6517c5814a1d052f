// Package bench measures what one jetpilot worker costs and how far it
// scales, side by side with what nats.go alone does on the same server in
// the same run (issue 6). `jetpilot-bench` (cmd/jetpilot-bench, a binary
// of its own, not part of the shipped jetpilot binary) and `make bench` drive it.
//
// Every scenario runs on an embedded nats-server (random port on 127.0.0.1,
// temporary store, file storage as in production) and, where an agent
// server is needed, the agentsim simulator on 127.0.0.1. Every load loop is
// bounded in count and in time (Options.ScenarioTimeout). The scenarios:
//
//   - baseline: the raw JetStream worker loop with nats.go alone: pull a job,
//     publish a result with a dedup id and wait for its ack, ack the job;
//   - queue: a jetpilot worker whose runner returns at once (no HTTP);
//   - full: a jetpilot worker against agentsim answering at once (HTTP + SSE);
//   - scaleout: 1, 2 and 4 workers (queue path) on one durable consumer;
//   - concurrency: 10,000 runs held open by the simulator on one worker:
//     RSS and goroutines per in-flight run and CPU while they idle, with the
//     worker in a child process so the simulator's and the NATS server's
//     own costs are not counted (Options.ChildCommand);
//   - latency: a steady publish rate through the full path: publish to
//     session created, and run_completed to result stored.
//   - policy: 8 workers watching the policy bucket (worker.StoredPolicies);
//     per `policy set` (PolicyStore.Set), the time until every worker
//     applied the new version, next to 8 raw nats.go KV watchers of the same
//     key seeing a kv.Put.
//
// Each scenario runs Options.Runs times; the Report keeps every sample and
// its median, and the ratios to the baseline measured in the same run.
//
// The package owns the load generators, the measurement and the report. It
// does not own the worker, the runner or the simulator: it drives them
// through their public APIs (worker.New, spawn.NewRunner, agentsim.New)
// exactly as a deployment would.
package bench
