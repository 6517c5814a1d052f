// Package policy is the fleet operator's policy: one document (YAML or
// JSON, schemas/policy.v1.json) that decides every tool call a job's agent
// proposes and caps every field a job sends. A job can only narrow it.
//
// A Policy is compiled once per version and never changed, so a worker
// swaps versions with one pointer store and a run reads the version in
// force at each tool decision. Evaluating one call walks the rules in
// order (first match wins) and matches argument patterns against the
// call's top-level string fields; it allocates little and takes a few
// microseconds (BenchmarkDecide).
//
// Matching is built to fail closed. Patterns match the whole field. A
// missing, non-string or duplicated argument field never matches an allow
// rule and always matches a deny or approve rule, and in deny and approve
// rules "." also matches a newline. Deny and approve rules compare bare
// tool names whatever the server prefix; allow rules accept a prefix only
// when it is one of tools.bare_prefixes (any, when that is not set).
//
// Where a policy comes from, in order: the document stored in the KV bucket
// jetpilot_policy (its revision is the version), the worker's flags
// (FromFlags), the built-in Default (read-only tools run, everything else
// waits for a human).
package policy
