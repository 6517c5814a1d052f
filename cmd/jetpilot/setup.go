package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func newSetupCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Create or update the streams and the runs bucket (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeLog()
			nc, js, err := g.connect(cmd.Context(), "jetpilot setup", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			cfg := g.queueConfig()
			if err := queue.Setup(cmd.Context(), js, cfg); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			out := cmd.OutOrStdout()
			for _, s := range []string{cfg.JobsStream(), cfg.ResultsStream(), cfg.ApprovalsStream(), cfg.DecisionsStream(), cfg.EventsStream(), cfg.DeadStream()} {
				fmt.Fprintf(out, "stream %s ready\n", s)
			}
			fmt.Fprintf(out, "kv bucket %s ready\n", cfg.RunsBucket())
			return nil
		},
	}
}
