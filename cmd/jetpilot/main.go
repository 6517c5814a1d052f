// Command jetpilot is the one binary of jetpilot: the worker, the producer and
// operator tools (submit, results, approvals, approve, cancel, events, audit,
// steer, jobs, job, dead, requeue, setup, policy, keys, schedule), the
// all-in-one `dev` environment and the agent-server simulator. The
// benchmarks are a binary of their own, cmd/jetpilot-bench, so none of the
// harness ships here. See DESIGN.md for the subjects, messages and exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes. Every command exits 0 on success, 1 when what it did failed
// (or an id it was given is unknown), 2 on a usage error (a stray
// argument, an unknown flag or command, a bad value). submit --wait maps a
// result's status onto them (DESIGN.md) and adds its own:
//
//	0    completed (and every command's success)
//	1    failed or cancelled; an unknown job, approval or dead letter; approve refused
//	2    rejected; a usage error
//	10   paused
//	75   gave up waiting (submit --wait past --wait-timeout, approve past
//	     --wait-timeout): the job may still run, the decision may still apply
//	124  timed out (the job's own timeout)
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitPaused   = 10
	exitGaveUp   = 75 // EX_TEMPFAIL of sysexits.h: try again later
	exitTimedOut = 124
)

// exitError carries a process exit code up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "jetpilot:", safeBlock(ee.err.Error()))
		}
		os.Exit(ee.code)
	}
	// An error can quote a worker's answer or a message's text: escaped.
	fmt.Fprintln(os.Stderr, "jetpilot:", safeBlock(err.Error()))
	os.Exit(exitFailed)
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "jetpilot",
		Short:         "Run Stakpak agent sessions as jobs from NATS JetStream",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd)
		},
	}
	g.register(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	root.Version = version()
	root.SetVersionTemplate("{{.Version}}\n")
	root.AddCommand(
		newWorkerCmd(g),
		newSubmitCmd(g),
		newResultsCmd(g),
		newSetupCmd(g),
		newDevCmd(g),
		newAgentsimCmd(g),
		newApprovalsCmd(g),
		newApproveCmd(g),
		newCancelCmd(g),
		newSteerCmd(g),
		newEventsCmd(g),
		newPolicyCmd(g),
		newKeysCmd(),
		newAuditCmd(g),
		newScheduleCmd(g),
		newJobsCmd(g),
		newJobCmd(g),
		newDeadCmd(g),
		newRequeueCmd(g),
		newConsoleCmd(g),
	)
	usageErrors(root)
	return root
}

// usageErrors makes every way to call a command wrongly exit 2: a stray or
// missing argument (every command's Args validator, NoArgs where a command
// sets none), and an unknown subcommand, which cobra would otherwise answer
// with its help and exit 0, or with exit 1 at the root.
func usageErrors(c *cobra.Command) {
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		}
		return
	}
	args := c.Args
	if args == nil {
		args = cobra.NoArgs
	}
	c.Args = func(cmd *cobra.Command, a []string) error {
		if err := args(cmd, a); err != nil {
			var ee *exitError
			if errors.As(err, &ee) {
				return err
			}
			return &exitError{code: exitUsage, err: fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
		}
		return nil
	}
}

// version is the module version and VCS revision the binary was built
// from, as the Go toolchain recorded them.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "jetpilot (no build information)"
	}
	return formatVersion(bi)
}

// formatVersion is "jetpilot v1.2.3 (REVISION TIME, modified) go1.26.8"
// ("(devel)" for a build from a checkout; the revision part only when the
// toolchain stamped it: go build -buildvcs).
func formatVersion(bi *debug.BuildInfo) string {
	v := "jetpilot " + bi.Main.Version
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		v += " (" + rev
		if t := settings["vcs.time"]; t != "" {
			v += " " + t
		}
		if settings["vcs.modified"] == "true" {
			v += ", modified"
		}
		v += ")"
	}
	return v + " " + bi.GoVersion
}

// applyEnv gives every flag that was not set on the command line the value of
// JETPILOT_<FLAG> (dashes as underscores), so a deployment can be configured
// from the environment alone.
func applyEnv(cmd *cobra.Command) error {
	var err error
	set := func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := "JETPILOT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if serr := f.Value.Set(v); serr != nil {
			err = usageError("%s: %v", name, serr)
			return
		}
		f.Changed = true
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	return err
}
