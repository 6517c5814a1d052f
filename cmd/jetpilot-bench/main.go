// Command jetpilot-bench measures worker throughput, concurrency, latency and
// policy propagation next to raw nats.go on the same embedded server
// (package bench). It is a
// binary of its own so the shipped jetpilot binary carries none of the
// benchmark harness. `make bench` builds and runs it.
//
// The concurrency scenario re-executes this binary as its worker process
// (`jetpilot-bench child-worker`, hidden, configured through
// JETPILOT_BENCH_CHILD): os.Executable is the child's command.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/bench"
)

const (
	exitFailed = 1
	exitUsage  = 2
)

// usageErr is a usage error: exit code 2.
type usageErr struct{ err error }

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &usageErr{err: fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "jetpilot-bench:", err)
	var ue *usageErr
	if errors.As(err, &ue) {
		os.Exit(exitUsage)
	}
	os.Exit(exitFailed)
}

// newRootCmd is `jetpilot-bench`: the flags and behaviour `jetpilot bench`
// had.
func newRootCmd() *cobra.Command {
	var (
		quick, asJSON bool
		scenarios     []string
		opts          bench.Options
	)
	cmd := &cobra.Command{
		Use:           "jetpilot-bench",
		Short:         "Measure worker throughput, concurrency and latency against raw nats.go (loopback only)",
		SilenceUsage:  true,
		SilenceErrors: true,
		Long: "Runs every scenario --runs times on an embedded NATS server and the agent simulator on\n" +
			"127.0.0.1 and prints the medians, with ratios to the raw nats.go baseline of the same run.\n" +
			"Scenarios: baseline, queue, full, scaleout, latency, concurrency, policy (default: all).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := opts
			if quick {
				applyQuick(cmd, &o)
			}
			sc, err := bench.ParseScenarios(scenarios)
			if err != nil {
				return usageError("--scenario: %v", err)
			}
			o.Scenarios = sc
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable for the worker process: %w", err)
			}
			o.ChildCommand = []string{exe, "child-worker"}
			o.Progress = cmd.ErrOrStderr()
			r, err := bench.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return r.WriteTable(cmd.OutOrStdout())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageErr{err: err}
	})
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "a small load (about a minute); figures are noisy")
	f.BoolVar(&asJSON, "json", false, "print the whole report, every sample included, as JSON")
	f.StringSliceVar(&scenarios, "scenario", nil, "scenarios to run, comma separated (default: all; baseline is added when ratios need it)")
	f.IntVar(&opts.Runs, "runs", bench.DefaultRuns, "runs of every scenario; the table shows medians")
	f.IntVar(&opts.Jobs, "jobs", bench.DefaultJobs, "jobs per run of baseline, queue and scaleout")
	f.IntVar(&opts.FullJobs, "full-jobs", bench.DefaultFullJobs, "jobs per run of the full path")
	f.IntVar(&opts.Concurrency, "concurrency", bench.DefaultConcurrency, "job slots per worker (and of the baseline loop)")
	f.IntVar(&opts.InFlight, "in-flight", bench.DefaultInFlight, "runs held open in the concurrency scenario")
	f.DurationVar(&opts.IdleWindow, "idle-window", bench.DefaultIdleWindow, "CPU measuring window while the runs idle")
	f.IntVar(&opts.Rate, "rate", bench.DefaultRate, "jobs/s of the latency scenario")
	f.DurationVar(&opts.LatencyDuration, "latency-duration", bench.DefaultLatencyDuration, "how long the latency scenario publishes")
	f.IntVar(&opts.PolicyWorkers, "policy-workers", bench.DefaultPolicyWorkers, "workers (and raw KV watchers) the policy scenario reaches")
	f.IntVar(&opts.PolicyUpdates, "policy-updates", bench.DefaultPolicyUpdates, "policy versions stored per run of the policy scenario")
	f.BoolVar(&opts.Durable, "durable", false, "fsync every JetStream write (sync_interval: always), as jetpilot dev does")
	f.StringVar(&opts.ProfileDir, "profile", "", "write CPU and allocation profiles of the raw loop with events, the queue path and the full path (first run) to this directory")

	cmd.AddCommand(&cobra.Command{
		Use:    "child-worker",
		Short:  "The concurrency scenario's worker process (started by jetpilot-bench itself)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf := os.Getenv(bench.ChildEnv)
			if conf == "" {
				return usageError("child-worker is started by jetpilot-bench, with %s set", bench.ChildEnv)
			}
			return bench.ChildMain(cmd.Context(), conf, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	})
	return cmd
}

// applyQuick applies bench.QuickOptions to o; explicit flags win over --quick.
func applyQuick(cmd *cobra.Command, o *bench.Options) {
	q := bench.QuickOptions()
	fs := cmd.Flags()
	if !fs.Changed("runs") {
		o.Runs = q.Runs
	}
	if !fs.Changed("jobs") {
		o.Jobs = q.Jobs
	}
	if !fs.Changed("full-jobs") {
		o.FullJobs = q.FullJobs
	}
	if !fs.Changed("in-flight") {
		o.InFlight = q.InFlight
	}
	if !fs.Changed("idle-window") {
		o.IdleWindow = q.IdleWindow
	}
	if !fs.Changed("latency-duration") {
		o.LatencyDuration = q.LatencyDuration
	}
}
