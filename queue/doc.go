// Package queue owns jetpilot's use of NATS JetStream: the names of every
// subject, stream, consumer and KV bucket (Config), creating and updating
// them (Setup, EnsureWorkerConsumer, EnsureDecisionConsumer), publishing
// results, approvals, events and dead letters with the deduplication ids
// DESIGN.md fixes, the KV store of runs (RunStore), the fleet's policy
// document, stored and watched (PolicyStore), the hash-chained audit trail
// (AuditLog: append, read, verify), the producer client that
// the CLI and Go programs use to submit jobs and read what happened (Client),
// and an embedded nats-server for `jetpilot dev` and tests (StartEmbedded).
//
// It does not own the message types or their validation (package schemas),
// talking to the agent server (package spawn), or the worker loop that
// fetches, runs, acks and dead-letters jobs (package worker). Connecting to
// NATS (URLs, credentials, TLS) is the caller's job: every function here takes
// a ready jetstream.JetStream.
package queue
