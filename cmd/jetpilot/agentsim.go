package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

func newAgentsimCmd(g *globalFlags) *cobra.Command {
	var addr, tokenFile string
	cmd := &cobra.Command{
		Use:   "agentsim",
		Short: "Serve the agent-server simulator (scripted by #sim directives in prompts)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeLog()
			opts := agentsim.Options{Logger: log}
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("read --token-file: %w", err)
				}
				opts.Token = strings.TrimSpace(string(b))
			}
			log.Info("agent simulator listening", "addr", addr, "auth", opts.Token != "")
			return agentsim.ListenAndServe(cmd.Context(), addr, opts)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:4096", "listen address")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "require this bearer token (file); default: no auth")
	return cmd
}
