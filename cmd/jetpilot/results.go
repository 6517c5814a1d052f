package main

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
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
			if jobID != "" {
				if err := schemas.ValidateJobID(jobID); err != nil {
					return usageError("--job: %v", err)
				}
			}
			return withClient(cmd, g, "jetpilot results", func(ctx context.Context, _ jetstream.JetStream, c *queue.Client) error {
				n := 0
				err := c.Results(ctx, queue.ResultsOptions{JobID: jobID, Follow: follow}, func(res schemas.Result) error {
					n++
					return printResult(cmd.OutOrStdout(), res, asJSON)
				})
				if err == nil && n == 0 && jobID != "" {
					// An id that names nothing is an answer, not silence.
					return &exitError{code: exitFailed, err: fmt.Errorf(
						"no results for job %s: the job is unknown, or not settled or paused yet (jetpilot job %s says which)", jobID, jobID)}
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&jobID, "job", "", "only this job's results")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new results until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print result documents as JSON")
	return cmd
}
