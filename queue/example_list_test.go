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

// An operator's view pages through the queued jobs, two at a time, and
// reads the queue depth per profile. The same Lister lists running,
// paused, settled and dead jobs; each page's Next is the cursor of the
// next one.
func ExampleLister() {
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
	if err := queue.Setup(ctx, js, cfg); err != nil {
		log.Fatal(err)
	}
	client := queue.NewClient(js, cfg)
	for _, job := range []schemas.Job{
		{ID: "build:41", Prompt: "Why did build 41 fail?", Profile: "ci"},
		{ID: "build:42", Prompt: "Why did build 42 fail?", Profile: "ci"},
		{ID: "triage-7", Prompt: "Triage issue 7"},
	} {
		if _, err := client.Submit(ctx, job); err != nil {
			log.Fatal(err)
		}
	}

	lister := queue.NewLister(js, cfg)
	depth, err := lister.Depth(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("depth:", depth)
	var after uint64
	for {
		page, err := lister.List(ctx, queue.JobQueued, queue.WithLimit(2), queue.WithAfter(after))
		if err != nil {
			log.Fatal(err)
		}
		for _, j := range page.Jobs {
			fmt.Printf("%s %s (%s)\n", j.State, j.JobID, j.Profile)
		}
		if page.Next == 0 {
			break
		}
		after = page.Next
	}
	// Output:
	// depth: map[ci:2 default:1]
	// queued build:41 (ci)
	// queued build:42 (ci)
	// queued triage-7 (default)
}
