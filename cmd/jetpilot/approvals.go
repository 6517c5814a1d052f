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
	"github.com/jetpilot-dev/jetpilot/signing"
)

// withClient connects and hands a producer client to fn.
func withClient(cmd *cobra.Command, g *globalFlags, name string, fn func(ctx context.Context, js jetstream.JetStream, c *queue.Client) error) error {
	return withConn(cmd, g, name, func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
		err := fn(ctx, js, queue.NewClient(js, g.queueConfig()))
		if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return nil // interrupted while following
		}
		return err
	})
}

func printJSON(w io.Writer, v any) error { return writeJSON(w, v, true) }

// printApproval prints an approval request for a human. Everything in it
// but the expiry time was written by an agent or a publisher: it is escaped.
func printApproval(w io.Writer, a schemas.ApprovalRequest, votes []string) {
	fmt.Fprintf(w, "approval %s for job %s (expires %s)\n", safeLine(a.ApprovalID), safeLine(a.JobID), a.ExpiresAt.Format(time.RFC3339))
	for _, t := range a.PendingToolCalls {
		fmt.Fprintf(w, "  %s %s  [%s]\n", safeLine(t.Name), safeLine(string(t.Arguments)), safeLine(t.ID))
	}
	if len(a.Metadata) > 0 {
		fmt.Fprintf(w, "  metadata: %s\n", metadataLine(a.Metadata))
	}
	if a.PendingDigest != "" {
		fmt.Fprintf(w, "  pending_digest: %s\n", safeLine(a.PendingDigest))
	}
	if n := a.Needs; n != nil {
		fmt.Fprintf(w, "  needs: %s\n", needsLine(n, votes))
	}
	fmt.Fprintf(w, "  answer: jetpilot approve %s --job %s --allow|--deny [--key FILE]\n", safeLine(a.ApprovalID), safeLine(a.JobID))
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
			return withClient(cmd, g, "jetpilot approvals", func(ctx context.Context, js jetstream.JetStream, c *queue.Client) error {
				out := cmd.OutOrStdout()
				// Who approved so far is in the audit stream; without it
				// (no permission to read it) the view goes without.
				audit, _ := queue.NewAuditLog(ctx, js, g.queueConfig())
				return c.Approvals(ctx, follow, func(a schemas.ApprovalRequest) error {
					if asJSON {
						return printJSON(out, a)
					}
					printApproval(out, a, approvalVotes(ctx, audit, a))
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
	var jobID, by, keyFile string
	var allow, deny bool
	var waitTimeout time.Duration
	var tools []string
	cmd := &cobra.Command{
		Use:   "approve APPROVAL_ID (--allow | --deny | --tool CALL_ID=accept|reject ...) [--key FILE]",
		Short: "Answer an approval request; with --key, sign the answer",
		Long: "Answer an approval request and wait (--wait-timeout, default 30s) for a worker to apply it\n" +
			"(exit 0; also when an allow is recorded and the quorum is not met yet) or refuse it (exit 1, with\n" +
			"the reason); exit 75 when no worker answered in time. With --key FILE (an nkey user seed, see `jetpilot keys new`) the\n" +
			"decision is signed: it carries the request's pending_digest, so it applies to exactly the calls\n" +
			"the request shows, and decided_at. A policy with `decisions: signed` applies signed decisions only.",
		Args: cobra.ExactArgs(1),
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
			var seed []byte
			if keyFile != "" {
				// Read the key before connecting: a bad key file is the
				// approver's to fix, whatever the network does.
				var err error
				if seed, err = readSeedFile(keyFile); err != nil {
					return usageError("--key: %v", err)
				}
				defer wipe(seed)
			}
			if waitTimeout < 0 {
				return usageError("--wait-timeout must not be negative, got %s", waitTimeout)
			}
			return withConn(cmd, g, "jetpilot approve", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				c := queue.NewClient(js, g.queueConfig())
				if d.JobID == "" {
					req, err := c.FindApproval(ctx, d.ApprovalID)
					if errors.Is(err, queue.ErrApprovalNotFound) {
						return &exitError{code: exitFailed, err: fmt.Errorf("unknown approval %s: no approval request has this id (jetpilot approvals lists them)", d.ApprovalID)}
					}
					if err != nil {
						return fmt.Errorf("find approval %s (give --job to skip the search): %w", d.ApprovalID, err)
					}
					d.JobID = req.JobID
				} else if seed == nil {
					// A wrong id is refused here, not only by a worker.
					if _, err := findApprovalRaw(ctx, js, g.queueConfig(), d.JobID, d.ApprovalID); err != nil {
						if errors.Is(err, queue.ErrApprovalNotFound) {
							return &exitError{code: exitFailed, err: err}
						}
						return err
					}
				}
				if seed != nil {
					if err := signDecision(ctx, cmd, js, g.queueConfig(), &d, seed); err != nil {
						return err
					}
				}
				data, err := json.Marshal(d)
				if err != nil {
					return fmt.Errorf("encode decision: %w", err)
				}
				if _, err := schemas.DecodeDecision(data); err != nil {
					return usageError("invalid decision: %v", err)
				}
				signed := ""
				if d.Signature != nil {
					signed = " signed by " + d.Signature.Key
				}
				out := cmd.OutOrStdout()
				if waitTimeout == 0 {
					if err := c.Decide(ctx, d); err != nil {
						return fmt.Errorf("publish decision: %w", err)
					}
					fmt.Fprintf(out, "decision for approval %s of job %s published%s; follow it with: jetpilot events %s --follow\n",
						safeLine(d.ApprovalID), safeLine(d.JobID), signed, safeLine(d.JobID))
					return nil
				}
				wctx, cancel := context.WithTimeout(ctx, waitTimeout)
				defer cancel()
				o, err := c.DecideAndWait(wctx, d)
				switch {
				case err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
					return &exitError{code: exitGaveUp, err: fmt.Errorf(
						"decision for approval %s of job %s published%s, but no worker answered within %s (--wait-timeout): it applies when a worker takes it; follow it with: jetpilot events %s --follow",
						d.ApprovalID, d.JobID, signed, waitTimeout, d.JobID)}
				case err != nil:
					return err
				case o.Refused != nil:
					return &exitError{code: exitFailed, err: fmt.Errorf("decision for approval %s of job %s refused: %s: %s",
						d.ApprovalID, d.JobID, o.Refused.Code, o.Refused.Message)}
				case o.Voted:
					fmt.Fprintf(out, "vote on approval %s of job %s recorded%s: %s\n", safeLine(d.ApprovalID), safeLine(d.JobID), signed, safeLine(o.Event.Text))
				default:
					fmt.Fprintf(out, "decision on approval %s of job %s applied%s: the run resumed; follow it with: jetpilot events %s --follow\n",
						safeLine(d.ApprovalID), safeLine(d.JobID), signed, safeLine(d.JobID))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "sign the decision with the nkey user seed in `FILE` (mode 0600; made by jetpilot keys new)")
	cmd.Flags().StringVar(&jobID, "job", "", "the job the approval belongs to (default: looked up in the approvals stream)")
	cmd.Flags().BoolVar(&allow, "allow", false, "accept every pending tool call")
	cmd.Flags().BoolVar(&deny, "deny", false, "reject every pending tool call")
	cmd.Flags().StringArrayVar(&tools, "tool", nil, "CALL_ID=accept|reject for one pending call (repeatable; every pending call needs one)")
	cmd.Flags().StringVar(&by, "by", "", "who decided (default $USER)")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", 30*time.Second,
		"wait this long for a worker to apply or refuse the decision (exit 1 refused, 75 no answer); 0 publishes without waiting")
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
			return withClient(cmd, g, "jetpilot cancel", func(ctx context.Context, js jetstream.JetStream, _ *queue.Client) error {
				body, _ := json.Marshal(schemas.CancelRequest{Schema: schemas.CancelSchemaID, JobID: jobID})
				r, err := askWorker(ctx, js, g.queueConfig().CancelSubject(jobID), body, wait, "cancel job "+jobID)
				if err != nil {
					return err
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
			if err := schemas.ValidateJobID(args[0]); err != nil {
				return usageError("%v", err)
			}
			return withClient(cmd, g, "jetpilot events", func(ctx context.Context, _ jetstream.JetStream, c *queue.Client) error {
				out := cmd.OutOrStdout()
				n := 0
				err := c.Events(ctx, args[0], follow, func(e schemas.Event) error {
					n++
					if asJSON {
						return writeJSON(out, e, false)
					}
					printEvent(out, e)
					return nil
				})
				if err == nil && n == 0 {
					return &exitError{code: exitFailed, err: fmt.Errorf(
						"no events for job %s: the job is unknown, not started yet, or its events expired (they are kept for an hour; jetpilot job %s says which)", args[0], args[0])}
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new events until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print event documents as JSON")
	return cmd
}

// signDecision binds d to the approval request it answers and signs it:
// it reads the request from the approvals stream, computes the digest of
// its pending_tool_calls as published (and compares it with the request's
// own pending_digest, when the worker set one), checks the decision against
// the pending calls as the worker will, then sets pending_digest and
// decided_at and signs.
func signDecision(ctx context.Context, cmd *cobra.Command, js jetstream.JetStream, cfg queue.Config, d *schemas.Decision, seed []byte) error {
	raw, err := findApprovalRaw(ctx, js, cfg, d.JobID, d.ApprovalID)
	if err != nil {
		return err
	}
	var req schemas.ApprovalRequest
	var calls struct {
		PendingToolCalls json.RawMessage `json:"pending_tool_calls"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		return fmt.Errorf("approval request %s: unreadable: %w", d.ApprovalID, err)
	}
	if err := json.Unmarshal(raw, &calls); err != nil || len(calls.PendingToolCalls) == 0 {
		return fmt.Errorf("approval request %s has no pending_tool_calls to sign for", d.ApprovalID)
	}
	// The digest of the calls exactly as published: it covers members this
	// version of jetpilot may not know.
	digest, err := signing.PendingDigestJSON(calls.PendingToolCalls)
	if err != nil {
		return fmt.Errorf("approval request %s: cannot sign for its pending calls: %w", d.ApprovalID, err)
	}
	if req.PendingDigest != "" && req.PendingDigest != digest {
		return fmt.Errorf("approval request %s: its pending_digest %s is not the digest of its pending_tool_calls (%s): not signing", d.ApprovalID, req.PendingDigest, digest)
	}
	if err := checkDecision(*d, req.PendingToolCalls); err != nil {
		return usageError("%v", err)
	}
	if !req.ExpiresAt.IsZero() && time.Now().After(req.ExpiresAt) {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: approval %s expired at %s; the worker will refuse the decision\n", d.ApprovalID, req.ExpiresAt.UTC().Format(time.RFC3339))
	}
	d.PendingDigest = digest
	d.DecidedAt = time.Now().UTC().Truncate(time.Second)
	if err := signing.SignDecision(d, seed); err != nil {
		return usageError("--key: %v", err)
	}
	return nil
}

// checkDecision refuses, before anything is signed, a decision the worker
// would refuse against these pending calls: one that names a call that is
// not pending, leaves one out, or accepts a call whose arguments were
// shortened (nobody saw what it would do).
func checkDecision(d schemas.Decision, pending []schemas.ToolCall) error {
	ids := map[string]bool{}
	var problems []string
	for _, c := range pending {
		ids[c.ID] = true
		td, decided := d.Decisions[c.ID]
		if c.ArgumentsTruncated && (d.All == schemas.DecideAllow || decided && td.Action != schemas.ActionReject) {
			problems = append(problems, fmt.Sprintf("call %s: its arguments were shortened to fit a message; it can only be denied", c.ID))
		}
		if d.All == "" && !decided {
			problems = append(problems, fmt.Sprintf("call %s (%s) has no decision: decide every pending call (--tool %s=accept|reject), or use --allow/--deny", c.ID, c.Name, c.ID))
		}
	}
	var unknown []string
	for id := range d.Decisions {
		if !ids[id] {
			unknown = append(unknown, id)
		}
	}
	slices.Sort(unknown)
	for _, id := range unknown {
		problems = append(problems, fmt.Sprintf("--tool %s: not a pending call of approval %s", id, d.ApprovalID))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// findApprovalRaw returns the approval request approvalID of job jobID as
// stored in the approvals stream, byte for byte: the digest must be of the
// calls as published, not as this version decodes and re-encodes them. It
// reads the job's approvals subject only, with an ordered consumer (what
// `jetpilot approvals` needs too, so no other permission).
func findApprovalRaw(ctx context.Context, js jetstream.JetStream, cfg queue.Config, jobID, approvalID string) ([]byte, error) {
	if err := schemas.ValidateJobID(jobID); err != nil {
		return nil, usageError("%v", err)
	}
	cons, err := js.OrderedConsumer(ctx, cfg.ApprovalsStream(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{cfg.ApprovalSubject(jobID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("read the approval requests of job %s: %w", jobID, err)
	}
	pending := uint64(0)
	if info := cons.CachedInfo(); info != nil {
		pending = info.NumPending
	}
	// Read what was stored when the consumer was made, no more: a job has
	// a few approval requests, one per pause.
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read the approval requests of job %s: %w", jobID, err)
		}
		got := uint64(0)
		for msg := range batch.Messages() {
			got++
			var head struct {
				ApprovalID string `json:"approval_id"`
			}
			if json.Unmarshal(msg.Data(), &head) == nil && head.ApprovalID == approvalID {
				return msg.Data(), nil
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read the approval requests of job %s: %w", jobID, err)
		}
		if got == 0 {
			return nil, fmt.Errorf("read the approval requests of job %s: no messages came in time", jobID)
		}
		pending -= min(got, pending)
	}
	return nil, fmt.Errorf("%w: no approval request %s for job %s (is --job right?)", queue.ErrApprovalNotFound, approvalID, jobID)
}

// needsLine says who may decide an approval, who has approved so far and
// who is still needed: "2 of alice, bob, carl (rules change; signed;
// not the requester); approved so far: bob; still needed: 1 more".
func needsLine(n *schemas.ApprovalNeeds, votes []string) string {
	who := "any approver"
	if len(n.AllowBy) > 0 {
		who = strings.Join(n.AllowBy, ", ")
	}
	var notes []string
	if len(n.Rules) > 0 {
		notes = append(notes, "rules "+strings.Join(n.Rules, ", "))
	}
	if n.Signed {
		notes = append(notes, "signed")
	} else {
		notes = append(notes, "unsigned")
	}
	if !n.RequesterMayApprove {
		notes = append(notes, "not the requester")
	}
	s := fmt.Sprintf("%d of %s (%s)", n.Quorum, who, strings.Join(notes, "; "))
	if n.Quorum > 1 {
		so := "nobody"
		if len(votes) > 0 {
			so = strings.Join(votes, ", ")
		}
		s += fmt.Sprintf("; approved so far: %s; still needed: %d more", so, max(0, n.Quorum-len(votes)))
	}
	return safeLine(s)
}

// approvalVotes are the approvers whose allow the audit chain records for
// the approval (a quorum not met yet), in order.
func approvalVotes(ctx context.Context, audit *queue.AuditLog, a schemas.ApprovalRequest) []string {
	if audit == nil || a.Needs == nil || a.Needs.Quorum < 2 {
		return nil
	}
	recs, err := audit.Chain(ctx, a.JobID)
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range recs {
		if r.Kind == schemas.AuditDecisionApplied && r.ApprovalID == a.ApprovalID && strings.HasPrefix(r.Decision, "allow (vote") {
			out = append(out, r.Approver.Name)
		}
	}
	return out
}
