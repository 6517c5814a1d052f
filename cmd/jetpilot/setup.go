package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func newSetupCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Create or update the streams and the runs bucket (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := g.queueConfig()
			err := withConn(cmd, g, "jetpilot setup", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				return queue.Setup(ctx, js, cfg)
			})
			if err != nil {
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
