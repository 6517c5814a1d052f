package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/bench"
)

// newBenchCmd is `jetpilot bench`: throughput, concurrency and latency of
// the worker next to raw nats.go on the same embedded server (package bench).
func newBenchCmd(_ *globalFlags) *cobra.Command {
	var (
		quick, asJSON bool
		scenarios     []string
		opts          bench.Options
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure worker throughput, concurrency and latency against raw nats.go (loopback only)",
		Long: "Runs every scenario --runs times on an embedded NATS server and the agent simulator on\n" +
			"127.0.0.1 and prints the medians, with ratios to the raw nats.go baseline of the same run.\n" +
			"Scenarios: baseline, queue, full, scaleout, latency, concurrency (default: all).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := opts
			if quick {
				q := bench.QuickOptions()
				// Explicit flags win over --quick.
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
			sc, err := bench.ParseScenarios(scenarios)
			if err != nil {
				return usageError("--scenario: %v", err)
			}
			o.Scenarios = sc
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable for the worker process: %w", err)
			}
			o.ChildCommand = []string{exe, "bench", "child-worker"}
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
	f.StringVar(&opts.ProfileDir, "profile", "", "write CPU and allocation profiles of the queue and full paths (first run) to this directory")

	cmd.AddCommand(&cobra.Command{
		Use:    "child-worker",
		Short:  "The concurrency scenario's worker process (started by bench itself)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf := os.Getenv(bench.ChildEnv)
			if conf == "" {
				return usageError("child-worker is started by `jetpilot bench`, with %s set", bench.ChildEnv)
			}
			return bench.ChildMain(cmd.Context(), conf, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	})
	return cmd
}
