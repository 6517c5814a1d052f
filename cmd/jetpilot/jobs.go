package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// listFlags are the paging flags of jobs and dead.
type listFlags struct {
	profile string
	limit   int
	after   uint64
	asJSON  bool
}

func (f *listFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.profile, "profile", "", "only this profile's jobs")
	cmd.Flags().IntVar(&f.limit, "limit", queue.DefaultListLimit, fmt.Sprintf("jobs per page (1-%d)", queue.MaxListLimit))
	cmd.Flags().Uint64Var(&f.after, "after", 0, "start after this cursor (the `CURSOR` a page printed as its next)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print pages as JSON")
}

// check refuses bad values before anything connects.
func (f *listFlags) check() error {
	if f.limit < 1 || f.limit > queue.MaxListLimit {
		return usageError("--limit must be 1-%d, got %d", queue.MaxListLimit, f.limit)
	}
	if f.profile != "" {
		if err := queue.ValidateProfile(f.profile); err != nil {
			return usageError("--profile: %v", err)
		}
	}
	return nil
}

func (f *listFlags) opts() []queue.ListOpt {
	opts := []queue.ListOpt{queue.WithLimit(f.limit), queue.WithAfter(f.after)}
	if f.profile != "" {
		opts = append(opts, queue.WithProfile(f.profile))
	}
	return opts
}

// listError makes a bad list option a usage error.
func listError(err error) error {
	if errors.Is(err, queue.ErrBadListOption) || errors.Is(err, queue.ErrUnknownJobState) {
		return &exitError{code: exitUsage, err: err}
	}
	return err
}

func newJobsCmd(g *globalFlags) *cobra.Command {
	f := &listFlags{}
	var state string
	cmd := &cobra.Command{
		Use:   "jobs [--state S] [--profile P] [--limit N] [--after CURSOR] [--json]",
		Short: "List jobs by state, a page at a time",
		Long: `List jobs by state: queued, running, paused, completed, failed, timed_out,
cancelled, rejected, settled (every final result) or dead. Without --state it
prints the queue depth per profile and the first page of queued, running and
paused jobs. A page ends with its cursor; --after CURSOR (with the same --state)
prints the next one.

Queued jobs are read from JOBS by direct gets (one per job listed) and the
depth from its subject counts; running and paused ones from the runs bucket,
settled ones from RESULTS and dead ones from DEAD, each in stream order from the
cursor, reading at most 10,000 messages per page. A page costs the same with
100 jobs or 100,000.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var st queue.JobState
			if state != "" {
				var err error
				if st, err = queue.ParseJobState(state); err != nil {
					return usageError("--state: %v", err)
				}
			} else if f.after != 0 {
				return usageError("--after needs --state: a cursor belongs to one state's listing")
			}
			return withClient(cmd, g, "jetpilot jobs", func(ctx context.Context, js jetstream.JetStream, _ *queue.Client) error {
				l := queue.NewLister(js, g.queueConfig())
				out := cmd.OutOrStdout()
				if st != "" {
					page, err := l.List(ctx, st, f.opts()...)
					if err != nil {
						return listError(err)
					}
					if f.asJSON {
						return writeJSON(out, page, true)
					}
					printPage(out, page, "jetpilot jobs --state "+string(st))
					return nil
				}
				depth, err := l.Depth(ctx)
				if err != nil {
					return err
				}
				pages := map[queue.JobState]*queue.JobPage{}
				for _, s := range []queue.JobState{queue.JobQueued, queue.JobRunning, queue.JobPaused} {
					if pages[s], err = l.List(ctx, s, f.opts()...); err != nil {
						return listError(err)
					}
				}
				if f.asJSON {
					return writeJSON(out, map[string]any{"depth": depth, "queued": pages[queue.JobQueued],
						"running": pages[queue.JobRunning], "paused": pages[queue.JobPaused]}, true)
				}
				fmt.Fprintf(out, "queue depth: %s\n", depthLine(depth))
				for _, s := range []queue.JobState{queue.JobQueued, queue.JobRunning, queue.JobPaused} {
					fmt.Fprintf(out, "\n%s:\n", s)
					printPage(out, pages[s], "jetpilot jobs --state "+string(s))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "queued, running, paused, completed, failed, timed_out, cancelled, rejected, settled or dead")
	f.register(cmd)
	return cmd
}

// depthLine is the queue depth per profile, sorted by profile.
func depthLine(depth map[string]uint64) string {
	if len(depth) == 0 {
		return "empty"
	}
	parts := make([]string, 0, len(depth))
	for _, p := range slices.Sorted(maps.Keys(depth)) {
		parts = append(parts, fmt.Sprintf("%s %d", safeLine(p), depth[p]))
	}
	return strings.Join(parts, ", ")
}

// printPage prints one line a job and, when there is more, how to get it.
// Everything a publisher, an agent or a worker wrote is escaped.
func printPage(w io.Writer, page *queue.JobPage, again string) {
	if len(page.Jobs) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, j := range page.Jobs {
		fmt.Fprintf(w, "  %s  %s  %s  %s\n", safeLine(j.JobID), j.State, j.Time.UTC().Format(time.RFC3339), jobNote(j))
	}
	if page.Next != 0 {
		fmt.Fprintf(w, "  more: %s --after %d\n", again, page.Next)
	}
	if page.Total > 0 {
		fmt.Fprintf(w, "  (%d %s in all)\n", page.Total, page.State)
	}
}

// jobNote is what matters about a listed job in its state.
func jobNote(j queue.JobInfo) string {
	var parts []string
	if j.Profile != "" {
		parts = append(parts, "profile "+safeLine(j.Profile))
	}
	switch {
	case j.Run != nil:
		r := j.Run
		parts = append(parts, fmt.Sprintf("attempt %d", r.Attempt))
		if r.Owner != "" && r.State != queue.RunPaused {
			parts = append(parts, "worker "+safeLine(r.Owner))
		}
		if r.ApprovalID != "" {
			parts = append(parts, "approval "+safeLine(r.ApprovalID))
		}
		if !r.ApprovalExpiresAt.IsZero() {
			parts = append(parts, "expires "+r.ApprovalExpiresAt.UTC().Format(time.RFC3339))
		}
	case j.Result != nil:
		r := j.Result
		parts = append(parts, fmt.Sprintf("attempt %d", r.Attempt))
		if r.Error != nil {
			parts = append(parts, "error "+safeLine(r.Error.Code))
		}
		if r.DurationMS > 0 {
			parts = append(parts, (time.Duration(r.DurationMS) * time.Millisecond).String())
		}
	case j.Dead != nil:
		parts = append(parts, "reason "+safeLine(j.Dead.Reason), fmt.Sprintf("attempt %d", j.Dead.Attempt))
	case j.State == queue.JobQueued:
		if j.Delivered {
			parts = append(parts, "taken by a worker")
		}
		if j.Problem != "" {
			parts = append(parts, safeLine(j.Problem))
		}
	}
	return strings.Join(parts, ", ")
}

func newJobCmd(g *globalFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "job JOB_ID",
		Short: "Everything known about one job: state, run record, results, approvals, dead letter, attempts",
		Long: `Print everything stored about one job: where it is, its run record, its
results, approval requests and dead letter, and how many attempts it took. A job
that is only queued is looked for among the oldest 10,000 queued jobs. Exits 1
when nothing is known about the job.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := schemas.ValidateJobID(args[0]); err != nil {
				return usageError("%v", err)
			}
			return withClient(cmd, g, "jetpilot job", func(ctx context.Context, js jetstream.JetStream, _ *queue.Client) error {
				d, err := queue.NewLister(js, g.queueConfig()).Find(ctx, args[0])
				if errors.Is(err, queue.ErrJobNotFound) {
					return &exitError{code: exitFailed, err: fmt.Errorf("unknown job: %w", err)}
				}
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(cmd.OutOrStdout(), d, true)
				}
				printJobDetail(cmd.OutOrStdout(), d)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the job's records as one JSON document")
	return cmd
}

func printJobDetail(w io.Writer, d *queue.JobDetail) {
	fmt.Fprintf(w, "job %s: %s (attempts %d)\n", safeLine(d.JobID), d.State, d.Attempts)
	if q := d.Queued; q != nil {
		fmt.Fprintf(w, "queued: since %s, %s (stream sequence %d)\n", q.Time.UTC().Format(time.RFC3339), jobNote(*q), q.Seq)
	}
	if r := d.Run; r != nil {
		fmt.Fprintf(w, "run: %s, phase %d, attempt %d", r.State, r.Phase, r.Attempt)
		if r.Owner != "" {
			fmt.Fprintf(w, ", worker %s", safeLine(r.Owner))
		}
		fmt.Fprintln(w)
		if r.SessionID != "" {
			fmt.Fprintf(w, "  session %s run %s\n", safeLine(r.SessionID), safeLine(r.RunID))
		}
		if !r.StartedAt.IsZero() {
			fmt.Fprintf(w, "  started %s, deadline %s, updated %s\n", r.StartedAt.UTC().Format(time.RFC3339),
				r.Deadline.UTC().Format(time.RFC3339), r.UpdatedAt.UTC().Format(time.RFC3339))
		}
		if r.ApprovalID != "" {
			fmt.Fprintf(w, "  waiting for approval %s (expires %s)\n", safeLine(r.ApprovalID), r.ApprovalExpiresAt.UTC().Format(time.RFC3339))
		}
		if r.CancelRequested {
			fmt.Fprintln(w, "  cancel requested")
		}
	}
	for _, res := range d.Results {
		fmt.Fprint(w, "result: ")
		_ = printResult(w, res, false)
	}
	for _, a := range d.Approvals {
		fmt.Fprint(w, "request: ")
		printApproval(w, a, nil)
	}
	for _, dl := range d.Dead {
		printDead(w, dl)
	}
	fmt.Fprintf(w, "audit: jetpilot audit %s\n", safeLine(d.JobID))
}

// printDead prints a dead letter; what the worker copied from the job and
// the agent server is escaped.
func printDead(w io.Writer, dl schemas.DeadLetter) {
	fmt.Fprintf(w, "dead letter %s: %s at %s, attempt %d, worker %s\n", safeLine(dl.JobID), safeLine(dl.Reason),
		dl.DeadAt.UTC().Format(time.RFC3339), dl.Attempt, safeLine(dl.Worker))
	if dl.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", safeLine(dl.Error))
	}
	for _, fe := range dl.Fields {
		fmt.Fprintf(w, "    %s\n", safeLine(fe.String()))
	}
	if len(dl.Metadata) > 0 {
		fmt.Fprintf(w, "  metadata: %s\n", metadataLine(dl.Metadata))
	}
	if !dl.JobTruncated && !dl.Unreadable && len(dl.Job) > 0 {
		fmt.Fprintf(w, "  requeue: jetpilot requeue %s\n", safeLine(dl.JobID))
	}
}

func newDeadCmd(g *globalFlags) *cobra.Command {
	f := &listFlags{}
	cmd := &cobra.Command{
		Use:   "dead [--profile P] [--limit N] [--after CURSOR] [--json]",
		Short: "List dead letters, a page at a time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return withClient(cmd, g, "jetpilot dead", func(ctx context.Context, js jetstream.JetStream, _ *queue.Client) error {
				page, err := queue.NewLister(js, g.queueConfig()).List(ctx, queue.JobDead, f.opts()...)
				if err != nil {
					return listError(err)
				}
				out := cmd.OutOrStdout()
				if f.asJSON {
					return writeJSON(out, page, true)
				}
				for _, j := range page.Jobs {
					printDead(out, *j.Dead)
				}
				if len(page.Jobs) == 0 {
					fmt.Fprintln(out, "no dead letters")
				}
				if page.Next != 0 {
					fmt.Fprintf(out, "more: jetpilot dead --after %d\n", page.Next)
				}
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}

func newRequeueCmd(g *globalFlags) *cobra.Command {
	var newID string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "requeue JOB_ID [--id NEW_ID]",
		Short: "Submit a dead-lettered job again, as a new job",
		Long: `Submit the job a dead letter holds again, exactly as it was received but for
its id: JOB_ID:r<the dead letter's sequence>, or --id NEW_ID. It goes through
submit's checks and duplicate window. A job whose dead letter holds no readable
job (unreadable, or cut to fit) cannot be requeued, nor a job signed by its
requester (a new id breaks the signature: submit it again, signed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			jobID := args[0]
			if err := schemas.ValidateJobID(jobID); err != nil {
				return usageError("%v", err)
			}
			if newID != "" {
				if err := schemas.ValidateJobID(newID); err != nil {
					return usageError("--id: %v", err)
				}
			}
			return withClient(cmd, g, "jetpilot requeue", func(ctx context.Context, js jetstream.JetStream, c *queue.Client) error {
				job, err := requeuedJob(ctx, js, g.queueConfig(), jobID, newID)
				if err != nil {
					return err
				}
				newID = job.ID
				ack, err := c.Submit(ctx, job)
				if err != nil {
					return fmt.Errorf("requeue job %s as %s: %w", jobID, newID, err)
				}
				if ack.Duplicate {
					return &exitError{code: exitUsage, err: fmt.Errorf("job %s was already submitted (JetStream dropped this copy as a duplicate id); give another --id", newID)}
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "requeued dead job %s as %s\n", safeLine(jobID), newID)
				if asJSON {
					return writeJSON(cmd.OutOrStdout(), map[string]any{"job_id": newID, "requeued_from": jobID, "stream": ack.Stream, "seq": ack.Seq}, false)
				}
				fmt.Fprintln(cmd.OutOrStdout(), newID)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&newID, "id", "", "id of the new job (default: JOB_ID:r<the dead letter's sequence>, the same each time)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new job's id and stream position as JSON")
	return cmd
}

// requeuedJob is the job of jobID's newest dead letter with the id newID,
// validated as submit validates.
func requeuedJob(ctx context.Context, js jetstream.JetStream, cfg queue.Config, jobID, newID string) (schemas.Job, error) {
	st, err := js.Stream(ctx, cfg.DeadStream())
	if err != nil {
		return schemas.Job{}, fmt.Errorf("requeue job %s: stream %s: %w", jobID, cfg.DeadStream(), err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, cfg.DeadSubject(jobID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return schemas.Job{}, &exitError{code: exitFailed, err: fmt.Errorf("no dead letter for job %s (jetpilot dead lists them)", jobID)}
	}
	if err != nil {
		return schemas.Job{}, fmt.Errorf("requeue job %s: read its dead letter: %w", jobID, err)
	}
	var dl schemas.DeadLetter
	if err := json.Unmarshal(msg.Data, &dl); err != nil {
		return schemas.Job{}, fmt.Errorf("requeue job %s: its dead letter does not decode: %w", jobID, err)
	}
	if newID == "" {
		newID = queue.RequeueID(jobID, msg.Sequence)
	}
	job, _, err := queue.RequeueJob(dl, newID)
	if errors.Is(err, queue.ErrNotRequeueable) {
		return schemas.Job{}, &exitError{code: exitFailed, err: err}
	}
	return job, err
}
