package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// withClient connects and hands a producer client to fn.
func withClient(cmd *cobra.Command, g *globalFlags, name string, fn func(ctx context.Context, nc *nats.Conn, c *queue.Client) error) error {
	return withConn(cmd, g, name, func(ctx context.Context, _ *slog.Logger, nc *nats.Conn, js jetstream.JetStream) error {
		err := fn(ctx, nc, queue.NewClient(js, g.queueConfig()))
		if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return nil // interrupted while following
		}
		return err
	})
}

func printJSON(w io.Writer, v any) error { return writeJSON(w, v, true) }

// printApproval prints an approval request for a human. Everything in it
// but the expiry time was written by an agent or a publisher: it is escaped.
func printApproval(w io.Writer, a schemas.ApprovalRequest) {
	fmt.Fprintf(w, "approval %s for job %s (expires %s)\n", safeLine(a.ApprovalID), safeLine(a.JobID), a.ExpiresAt.Format(time.RFC3339))
	for _, t := range a.PendingToolCalls {
		fmt.Fprintf(w, "  %s %s  [%s]\n", safeLine(t.Name), safeLine(string(t.Arguments)), safeLine(t.ID))
	}
	if len(a.Metadata) > 0 {
		fmt.Fprintf(w, "  metadata: %s\n", metadataLine(a.Metadata))
	}
	fmt.Fprintf(w, "  answer: jetpilot approve %s --job %s --allow|--deny\n", safeLine(a.ApprovalID), safeLine(a.JobID))
}

// metadataLine is a job's metadata as escaped k=v pairs, sorted by key.
func metadataLine(md map[string]string) string {
	pairs := make([]string, 0, len(md))
	for _, k := range slices.Sorted(maps.Keys(md)) {
		pairs = append(pairs, safeLine(k)+"="+safeLine(md[k]))
	}
	return strings.Join(pairs, " ")
}

// printEvent prints a live event as one line; its text is escaped.
func printEvent(w io.Writer, e schemas.Event) {
	fmt.Fprintf(w, "%s #%d %s", e.At.Format("15:04:05.000"), e.Seq, safeLine(string(e.Type)))
	switch {
	case e.Text != "":
		fmt.Fprintf(w, " \"%s\"", safeLine(e.Text))
	case e.Tool != nil:
		fmt.Fprintf(w, " %s [%s] %s", safeLine(e.Tool.Name), safeLine(e.Tool.ID), safeLine(e.Tool.Reason))
	case e.Status != "":
		fmt.Fprintf(w, " %s", safeLine(e.Status))
	}
	if e.ApprovalID != "" {
		fmt.Fprintf(w, " approval=%s", safeLine(e.ApprovalID))
	}
	if e.Error != nil {
		fmt.Fprintf(w, " error=%s: %s", safeLine(e.Error.Code), safeLine(e.Error.Message))
	}
	fmt.Fprintln(w)
}

func newApprovalsCmd(g *globalFlags) *cobra.Command {
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "Print approval requests, and with --follow keep printing new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, g, "jetpilot approvals", func(ctx context.Context, _ *nats.Conn, c *queue.Client) error {
				out := cmd.OutOrStdout()
				return c.Approvals(ctx, follow, func(a schemas.ApprovalRequest) error {
					if asJSON {
						return printJSON(out, a)
					}
					printApproval(out, a)
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new requests until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print request documents as JSON")
	return cmd
}

func newApproveCmd(g *globalFlags) *cobra.Command {
	var jobID, by string
	var allow, deny bool
	var tools []string
	cmd := &cobra.Command{
		Use:   "approve APPROVAL_ID (--allow | --deny | --tool CALL_ID=accept|reject ...)",
		Short: "Answer an approval request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := schemas.Decision{Schema: schemas.DecisionSchemaID, ApprovalID: args[0], JobID: jobID, DecidedBy: by}
			switch {
			case allow && !deny && len(tools) == 0:
				d.All = schemas.DecideAllow
			case deny && !allow && len(tools) == 0:
				d.All = schemas.DecideDeny
			case len(tools) > 0 && !allow && !deny:
				d.Decisions = map[string]schemas.ToolDecision{}
				for _, t := range tools {
					id, action, ok := strings.Cut(t, "=")
					if !ok || id == "" || (action != schemas.ActionAccept && action != schemas.ActionReject) {
						return usageError("--tool %q: want CALL_ID=accept or CALL_ID=reject", t)
					}
					d.Decisions[id] = schemas.ToolDecision{Action: action}
				}
			default:
				return usageError("give exactly one of --allow, --deny, or one or more --tool CALL_ID=accept|reject")
			}
			if d.DecidedBy == "" {
				d.DecidedBy = os.Getenv("USER")
			}
			return withClient(cmd, g, "jetpilot approve", func(ctx context.Context, _ *nats.Conn, c *queue.Client) error {
				if d.JobID == "" {
					req, err := c.FindApproval(ctx, d.ApprovalID)
					if err != nil {
						return fmt.Errorf("find approval %s (give --job to skip the search): %w", d.ApprovalID, err)
					}
					d.JobID = req.JobID
				}
				data, err := json.Marshal(d)
				if err != nil {
					return fmt.Errorf("encode decision: %w", err)
				}
				if _, err := schemas.DecodeDecision(data); err != nil {
					return usageError("invalid decision: %v", err)
				}
				if err := c.Decide(ctx, d); err != nil {
					return fmt.Errorf("publish decision: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "decision for approval %s of job %s published; follow it with: jetpilot events %s --follow\n",
					safeLine(d.ApprovalID), safeLine(d.JobID), safeLine(d.JobID))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&jobID, "job", "", "the job the approval belongs to (default: looked up in the approvals stream)")
	cmd.Flags().BoolVar(&allow, "allow", false, "accept every pending tool call")
	cmd.Flags().BoolVar(&deny, "deny", false, "reject every pending tool call")
	cmd.Flags().StringArrayVar(&tools, "tool", nil, "CALL_ID=accept|reject for one pending call (repeatable; every pending call needs one)")
	cmd.Flags().StringVar(&by, "by", "", "who decided (default $USER)")
	return cmd
}

func newCancelCmd(g *globalFlags) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID",
		Short: "Cancel a running or paused job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			jobID := args[0]
			if err := schemas.ValidateJobID(jobID); err != nil {
				return usageError("%v", err)
			}
			return withClient(cmd, g, "jetpilot cancel", func(ctx context.Context, nc *nats.Conn, _ *queue.Client) error {
				body, _ := json.Marshal(schemas.CancelRequest{Schema: schemas.CancelSchemaID, JobID: jobID})
				ctx, cancel := context.WithTimeout(ctx, wait)
				defer cancel()
				msg, err := nc.RequestWithContext(ctx, g.queueConfig().CancelSubject(jobID), body)
				if errors.Is(err, nats.ErrNoResponders) {
					return fmt.Errorf("cancel job %s: no worker is running to answer", jobID)
				}
				if err != nil {
					return fmt.Errorf("cancel job %s: no answer within %s: %w", jobID, wait, err)
				}
				var r worker.CancelReply
				if err := json.Unmarshal(msg.Data, &r); err != nil {
					return fmt.Errorf("cancel job %s: unreadable answer: %w", jobID, err)
				}
				if r.Error != nil {
					return fmt.Errorf("cancel job %s: %s", jobID, r.Error.Message)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "job %s: %s (worker %s); its result will say cancelled\n", jobID, safeLine(r.Outcome), safeLine(r.Worker))
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&wait, "timeout", 10*time.Second, "how long to wait for a worker's answer")
	return cmd
}

func newEventsCmd(g *globalFlags) *cobra.Command {
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "events JOB_ID",
		Short: "Print a job's live events, and with --follow keep printing them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, g, "jetpilot events", func(ctx context.Context, _ *nats.Conn, c *queue.Client) error {
				out := cmd.OutOrStdout()
				return c.Events(ctx, args[0], follow, func(e schemas.Event) error {
					if asJSON {
						return writeJSON(out, e, false)
					}
					printEvent(out, e)
					return nil
				})
			})
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new events until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print event documents as JSON")
	return cmd
}
