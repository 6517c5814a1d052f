package main

import (
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
			log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeLog()
			nc, js, err := g.connect(cmd.Context(), "jetpilot results", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			client := queue.NewClient(js, g.queueConfig())
			err = client.Results(cmd.Context(), queue.ResultsOptions{JobID: jobID, Follow: follow}, func(res schemas.Result) error {
				return printResult(cmd.OutOrStdout(), res, asJSON)
			})
			if follow && cmd.Context().Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&jobID, "job", "", "only this job's results")
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new results until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print result documents as JSON")
	return cmd
}
