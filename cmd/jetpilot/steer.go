package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/worker"
)

func newSteerCmd(g *globalFlags) *cobra.Command {
	var by, keyFile string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "steer JOB_ID TEXT [--key FILE]",
		Short: "Send guidance into a running job's agent",
		Long: "Send TEXT into the job's running agent as a steering message: it reads it before its next\n" +
			"step. A job that is queued, paused for approval or finished is refused with the reason.\n" +
			"Where the policy requires signed decisions, steering must be signed too: --key FILE (an\n" +
			"approver's nkey user seed, see `jetpilot keys new`).",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			jobID, text := args[0], args[1]
			if err := schemas.ValidateJobID(jobID); err != nil {
				return usageError("%v", err)
			}
			if strings.TrimSpace(text) == "" {
				return usageError("the guidance TEXT is empty")
			}
			if by == "" {
				by = os.Getenv("USER")
			}
			now := time.Now().UTC()
			req := schemas.SteerRequest{Schema: schemas.SteerSchemaID, JobID: jobID, Text: text, SteeredBy: by, SentAt: &now}
			if keyFile != "" {
				seed, err := readSeedFile(keyFile)
				if err != nil {
					return usageError("--key: %v", err)
				}
				err = signing.SignSteer(&req, seed)
				wipe(seed)
				if err != nil {
					return err
				}
			}
			body, err := schemas.Encode(req)
			if err != nil {
				return fmt.Errorf("encode steering request: %w", err)
			}
			if err := schemas.Validate(schemas.SchemaSteer, body); err != nil {
				return usageError("invalid steering request: %v", err)
			}
			return withClient(cmd, g, "jetpilot steer", func(ctx context.Context, js jetstream.JetStream, _ *queue.Client) error {
				r, err := askWorker(ctx, js, g.queueConfig().SteerSubject(jobID), body, wait, "steer job "+jobID)
				if err != nil {
					return err
				}
				if r.Error != nil {
					return fmt.Errorf("steer job %s: %s (%s)", jobID, r.Error.Message, r.Error.Code)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "job %s: %s (worker %s)\n", jobID, safeLine(r.Outcome), safeLine(r.Worker))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "sign the request with the nkey user seed in `FILE` (mode 0600; made by jetpilot keys new)")
	cmd.Flags().StringVar(&by, "by", "", "who steers (default $USER; with --key the key's approver is recorded)")
	cmd.Flags().DurationVar(&wait, "timeout", 30*time.Second, "how long to wait for a worker's answer")
	return cmd
}

// askWorker sends a cancel or steer request (core NATS request/reply) and
// reads the worker's cancel_reply; what names the request in errors. A
// reply that carries an error is returned as it is, for the caller to say.
func askWorker(ctx context.Context, js jetstream.JetStream, subject string, body []byte, wait time.Duration, what string) (worker.CancelReply, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	msg, err := js.Conn().RequestWithContext(ctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return worker.CancelReply{}, fmt.Errorf("%s: no worker is running to answer", what)
	}
	if err != nil {
		return worker.CancelReply{}, fmt.Errorf("%s: no answer within %s: %w", what, wait, err)
	}
	var r worker.CancelReply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return worker.CancelReply{}, fmt.Errorf("%s: unreadable answer: %w", what, err)
	}
	return r, nil
}
