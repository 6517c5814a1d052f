// Package faults proves jetpilot's promises (DESIGN.md, Principles) by
// injecting real faults into real processes: it builds the nats-server and
// jetpilot binaries, runs workers as child processes, and SIGKILLs workers,
// restarts NATS, kills a cluster's stream leader, takes the agent server off
// the network, corrupts its event stream, restarts the agent server with a
// new token, kills its runs silently, cancels runs its cancel flag alone
// would not end, decides while a tool runs and loses a decision's answer,
// feeds malformed jobs and tries to get secrets or wider tool policies out
// of a worker. Each scenario counts jobs lost, duplicate final results, jobs
// hung (no final result within its bound) and agent runs started per job,
// and fails on anything but 0, 0, 0 and 1.
//
// Every scenario runs in `go test ./faults/` with a small load, bounded in
// time; JETPILOT_FAULTS=1 (`make faults`) runs the same tests with the heavy
// loads whose figures RELIABILITY.md reports. Set JETPILOT_FAULTS_REPORT to a
// file name to have each scenario append its figures there as a Markdown row.
//
// What it does not own: the code under test. The package holds tests only
// (and this file); fixes for what it finds belong in the packages at fault.
package faults
