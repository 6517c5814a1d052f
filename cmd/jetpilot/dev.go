package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// demoPrompt scripts the simulator (see package agentsim): streamed text, a
// prefixed tool call the worker's policy accepts, more text, and usage.
const demoPrompt = `Check the pods in the staging namespace and summarise their health.
#sim text Looking at the staging namespace first.\n
#sim tool stakpak__run_command {"command":"kubectl get pods -n staging"}
#sim text All 12 pods are Running and none restarted in the last hour. Nothing to fix.
#sim usage 1200 340`

func newDevCmd(g *globalFlags) *cobra.Command {
	wf := &workerFlags{}
	var dir string
	var natsPort int
	var demo, keep bool
	var syncMode, consoleAddr string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Everything on one machine: embedded JetStream, a worker, and the agent simulator",
		Long: `Starts an embedded NATS server with JetStream (data under --dir), the agent
simulator (unless --agent-url names a real agent server) and a worker, and
prints the URLs so other jetpilot commands can connect. With --demo it submits
a demo job, prints its result and exits with the job's exit code.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if demo && !cmd.Flags().Changed("log-level") {
				// The demo's output is its result; the worker's logs would
				// interleave with it. --log-level info shows them.
				g.logLevel = "warn"
			}
			log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeLog()
			out := cmd.OutOrStdout()

			storeDir, err := filepath.Abs(filepath.Join(dir, "jetstream"))
			if err != nil {
				return fmt.Errorf("store dir: %w", err)
			}
			sync, err := queue.ParseSyncMode(syncMode)
			if err != nil {
				return usageError("--sync: %w", err)
			}
			ns, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: storeDir, Port: natsPort, ServerName: "jetpilot-dev", Sync: sync})
			if err != nil {
				return fmt.Errorf("start embedded NATS (try --nats-port -1 for a random port): %w", err)
			}
			defer func() {
				ns.Shutdown()
				ns.WaitForShutdown()
			}()
			g.natsURL, g.embedded = ns.ClientURL(), true
			fmt.Fprintf(out, "NATS (JetStream, data in %s, fsync %s): %s\n", storeDir, syncDescription(sync), g.natsURL)

			if !cmd.Flags().Changed("agent-url") {
				url, stop, err := startSimulator(ctx, log)
				if err != nil {
					return err
				}
				defer stop()
				wf.agentURL = url
				fmt.Fprintf(out, "agent simulator: %s\n", url)
			} else {
				fmt.Fprintf(out, "agent server: %s\n", wf.agentURL)
			}

			nc, js, err := g.connect(ctx, "jetpilot dev", log)
			if err != nil {
				return err
			}
			defer nc.Close()

			workerCtx, stopWorker := context.WithCancel(ctx)
			defer stopWorker()
			workerDone := make(chan error, 1)
			if err := queue.Setup(ctx, js, g.queueConfig()); err != nil {
				return fmt.Errorf("set up streams: %w", err)
			}
			if len(wf.allowedTools) == 0 {
				wf.fallback = policy.Dev(wf.maxTimeout)
				fmt.Fprintln(out, "policy: until one is stored (jetpilot policy set FILE), dev runs EVERY tool call unattended and applies unsigned decisions")
			}
			go func() { workerDone <- runWorker(workerCtx, g, wf, nc, js, log) }()
			if consoleAddr != "" && !demo {
				waitConsole, err := startDevConsole(workerCtx, out, js, g, dir, consoleAddr, !cmd.Flags().Changed("console-addr"), log)
				if err != nil {
					return err
				}
				defer func() { stopWorker(); _ = waitConsole() }()
			}
			fmt.Fprintf(out, "worker running; submit jobs with: jetpilot submit --nats %s --prompt '...' --wait\n", g.natsURL)

			code := exitOK
			if demo {
				job := schemas.Job{ID: fmt.Sprintf("demo-%d", time.Now().UnixNano()), Prompt: demoPrompt,
					Timeout: "2m", Metadata: map[string]string{"source": "jetpilot dev --demo"}}
				client := queue.NewClient(js, g.queueConfig())
				if _, err := client.Submit(ctx, job); err != nil {
					return fmt.Errorf("submit demo job: %w", err)
				}
				fmt.Fprintf(out, "submitted demo job %s; waiting for its result\n\n", job.ID)
				waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				res, _, err := client.WaitNext(waitCtx, job.ID, 0)
				cancel()
				if err != nil {
					return fmt.Errorf("wait for demo result: %w", err)
				}
				if err := printResult(out, res, false); err != nil {
					return err
				}
				code = exitCodeFor(res.Status)
				if !keep {
					stopWorker()
				}
			}
			select {
			case err := <-workerDone:
				if err != nil {
					return err
				}
			case <-ctx.Done():
				stopWorker()
				if err := <-workerDone; err != nil {
					return err
				}
			}
			if code != exitOK {
				return &exitError{code: code}
			}
			return nil
		},
	}
	wf.register(cmd.Flags())
	cmd.Flags().StringVar(&dir, "dir", ".jetpilot", "folder for the embedded server's data")
	cmd.Flags().IntVar(&natsPort, "nats-port", 4222, "embedded NATS port (-1: a random free port)")
	cmd.Flags().BoolVar(&demo, "demo", false, "submit a demo job, print its result, and exit")
	cmd.Flags().BoolVar(&keep, "keep-serving", false, "with --demo: keep serving after the demo job")
	cmd.Flags().StringVar(&consoleAddr, "console-addr", DefaultConsoleAddr, "address of the web console (\"\": none; not with --demo)")
	cmd.Flags().StringVar(&syncMode, "sync", "always", "when the embedded server fsyncs JetStream writes: always (every write, before its ack), "+
		"default (nats-server's: every 2m; faster, but acknowledged writes can be lost on power failure) or an interval such as 10s")
	return cmd
}

// syncDescription says what a sync mode means for an acknowledged write.
func syncDescription(m queue.SyncMode) string {
	if m.Always() {
		return "every write"
	}
	return "every " + m.Interval().String() + ": acknowledged writes can be lost on power failure"
}

// startSimulator serves the agent simulator on a free loopback port.
func startSimulator(ctx context.Context, log *slog.Logger) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen for agent simulator: %w", err)
	}
	sim := agentsim.New(agentsim.Options{Logger: log.With("component", "agentsim")})
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("agent simulator", "err", err)
		}
	}()
	return "http://" + ln.Addr().String(), func() {
		sim.Close()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		<-done
	}, nil
}
