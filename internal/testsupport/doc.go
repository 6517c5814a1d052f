// Package testsupport holds the helpers jetpilot's tests share, so that
// each exists once: bounded contexts, loggers that write to the test log,
// a concurrency-safe buffer, free ports, HTTP test servers on 127.0.0.1,
// reading and decoding a JetStream stream's messages, and child processes
// with captured output.
//
// Everything here is safe to call from the test goroutine only when it
// takes a testing.TB (it may call t.Fatal); the functions that return an
// error instead (ReadStream, DecodeJSON) are the ones to use inside an
// Eventually condition or another goroutine. Package testnats, beside it,
// starts embedded NATS servers. Neither is linked into a shipped binary
// (cmd/jetpilot's TestShipsNoTestCode checks it).
package testsupport
