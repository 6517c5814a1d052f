// Command jetpilot is the one binary of jetpilot: the worker, the producer and
// operator tools (submit, results, approvals, approve, cancel, events, audit,
// setup, policy, keys), the all-in-one `dev` environment and the agent-server simulator. The
// benchmarks are a binary of their own, cmd/jetpilot-bench, so none of the
// harness ships here. See DESIGN.md for the subjects, messages and exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of DESIGN.md; submit --wait maps a result's status onto them.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitPaused   = 10
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
		newEventsCmd(g),
		newPolicyCmd(g),
		newKeysCmd(),
		newAuditCmd(g),
		newConsoleCmd(g),
	)
	return root
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
