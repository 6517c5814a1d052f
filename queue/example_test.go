package queue_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// A producer submits a job and waits for its final result. The server is
// an embedded one with a throw-away store; a fleet connects to its NATS
// cluster instead. The job's result is published here by hand, where a
// jetpilot worker would run the job and publish it.
func ExampleClient_WaitResult() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
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
	// Setup creates the streams and the runs bucket (`jetpilot setup`).
	if err := queue.Setup(ctx, js, cfg); err != nil {
		log.Fatal(err)
	}

	client := queue.NewClient(js, cfg)
	ack, err := client.Submit(ctx, schemas.Job{ID: "build:42", Prompt: "Why did build 42 fail?"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("submitted to", ack.Stream)

	// What a worker does once the job has run.
	res := schemas.Result{JobID: "build:42", Stdout: "A flaky test.", Attempt: 1}
	res.SetStatus(schemas.StatusCompleted)
	if _, err := queue.PublishResult(ctx, js, cfg, res, 0); err != nil {
		log.Fatal(err)
	}

	final, err := client.WaitResult(ctx, "build:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %s\n", final.Status, final.Stdout)
	// Output:
	// submitted to JETPILOT_JOBS
	// completed: A flaky test.
}
