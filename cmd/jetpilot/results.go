package main

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func newResultsCmd(g *globalFlags) *cobra.Command {
	var jobID string
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "results",
		Short: "Print results (all, or one job's), and with --follow keep printing new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, g, "jetpilot results", func(ctx context.Context, _ *nats.Conn, c *queue.Client) error {
				return c.Results(ctx, queue.ResultsOptions{JobID: jobID, Follow: follow}, func(res schemas.Result) error {
					return printResult(cmd.OutOrStdout(), res, asJSON)
				})
			})
		},
	}
	cmd.Flags().StringVar(&jobID, "job", "", "only this job's results")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new results until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print result documents as JSON")
	return cmd
}
