// Package testnats starts throw-away embedded NATS servers with JetStream for
// tests: 127.0.0.1, a random port, a store under t.TempDir, and cleanup
// registered with the test. It owns nothing else; jetpilot's streams and
// consumers are created by package queue.
package testnats
