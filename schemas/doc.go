// Package schemas owns jetpilot's wire formats: the Go types of every
// message (Job, Result, ApprovalRequest, Decision, Event, DeadLetter,
// AuditRecord), their JSON Schema (2020-12) files, embedded, and the
// validation of what comes in.
//
// DecodeJob and DecodeDecision turn untrusted bytes into checked values.
// They apply the embedded schema (compiled once, on first use) plus the
// rules a schema cannot state (byte sizes, Go durations, totals), and on bad
// input return a *ValidationError that names every problem field by field in
// words a person can act on. Validate checks any message against its schema,
// which tests use to keep the Go types and the schemas in step.
//
// The package does not publish, consume or route messages (package queue),
// apply the tool policy or worker limits such as --max-timeout (package
// worker), or talk to the agent server (package spawn). It has no I/O.
package schemas
