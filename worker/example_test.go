package worker_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// The whole path in one process, as `jetpilot dev` runs it: an embedded
// NATS server, the agent-server simulator, a worker, and a producer that
// submits a job and waits for its result.
func ExampleWorker_Run() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)

	// NATS with JetStream, and the streams.
	dir, err := os.MkdirTemp("", "jetpilot-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: dir, Port: -1})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	cfg := queue.Config{}
	if err := queue.Setup(ctx, js, cfg); err != nil {
		log.Fatal(err)
	}

	// The agent server: the simulator on a loopback port.
	simCtx, stopSim := context.WithCancel(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	simDone := make(chan error, 1)
	go func() { simDone <- agentsim.New(agentsim.Options{Logger: quiet}).Serve(simCtx, ln) }()
	defer func() { stopSim(); <-simDone }()

	// The worker, running sessions through spawn's runner.
	client, err := spawn.NewClient(spawn.ClientOptions{BaseURL: "http://" + ln.Addr().String()})
	if err != nil {
		log.Fatal(err)
	}
	runner := spawn.NewRunner(client, spawn.RunnerOptions{Logger: quiet})
	w, err := worker.New(ctx, js, cfg, runner, worker.Options{Name: "example", Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	workCtx, stopWorker := context.WithCancel(ctx)
	workDone := make(chan error, 1)
	go func() { workDone <- w.Run(workCtx) }()
	defer func() { stopWorker(); <-workDone }()

	// The producer.
	producer := queue.NewClient(js, cfg)
	if _, err := producer.Submit(ctx, schemas.Job{ID: "hello-1", Prompt: "#sim text Hello, world."}); err != nil {
		log.Fatal(err)
	}
	res, err := producer.WaitResult(ctx, "hello-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s by %s: %s\n", res.Status, res.Worker, res.Stdout)
	// Output: completed by example: Hello, world.
}
