package spawn_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"slices"

	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// A job run as one session on an agent server: here the simulator, whose
// "#sim" lines script the model's answer.
func ExampleRunner_Run() {
	ctx, stop := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- agentsim.New(agentsim.Options{}).Serve(ctx, ln) }()
	defer func() { stop(); <-served }()

	client, err := spawn.NewClient(spawn.ClientOptions{BaseURL: "http://" + ln.Addr().String()})
	if err != nil {
		log.Fatal(err)
	}
	runner := spawn.NewRunner(client, spawn.RunnerOptions{Logger: slog.New(slog.DiscardHandler)})
	out, err := runner.Run(ctx, &spawn.Spec{Job: schemas.Job{ID: "example-1", Prompt: "#sim text Hello from the agent."}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.Status, out.Stdout)
	// Output: completed Hello from the agent.
}

// A human's decisions as the agent server must receive them: a reject with
// a reason becomes a custom_result carrying the reason, so the model reads
// why (the server ignores a reject's content).
func ExampleWireDecisions() {
	wire := spawn.WireDecisions(map[string]schemas.ToolDecision{
		"call_1": {Action: schemas.ActionAccept},
		"call_2": {Action: schemas.ActionReject, Content: "not on a Friday"},
		"call_3": {Action: schemas.ActionReject},
	})
	for _, id := range slices.Sorted(maps.Keys(wire)) {
		fmt.Printf("%s: %s %q\n", id, wire[id].Action, wire[id].Content)
	}
	// Output:
	// call_1: accept ""
	// call_2: custom_result "not on a Friday"
	// call_3: reject ""
}
