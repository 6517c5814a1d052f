package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

type submitFlags struct {
	prompt          string
	id              string
	profile         string
	timeout         string
	workdir         string
	model           string
	pauseOnApproval bool
	allowedTools    []string
	metadata        []string
	sessionKey      string
	concurrencyKey  string
	wait            bool
	waitTimeout     time.Duration
	attach          bool
	asJSON          bool
}

func newSubmitCmd(g *globalFlags) *cobra.Command {
	f := &submitFlags{}
	cmd := &cobra.Command{
		Use:   "submit",
		Short: "Publish a job (from flags, or a whole job as JSON on stdin)",
		Long: `Publish a spawn job. With --prompt the job is built from flags; without it,
a whole job document (jetpilot.job.v1) is read from stdin. The job is validated
before it is published. With --wait, waits for the job's first result and exits
0 completed, 1 failed or cancelled, 2 rejected, 10 paused, 124 timed out.
The wait is bounded by --wait-timeout (default: the job's timeout, or 1h, the
workers' default --max-timeout, for a job without one, plus 5m for queueing);
past it, submit exits 75: it gave up waiting, and the job may still run.
With --wait, a job id that was already submitted (within the 24h duplicate
window) exits 2 unless --attach is given, which waits for that earlier job's
result; a result whose job_digest shows it is of another job with the same id
also exits 2.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.waitTimeout < 0 {
				return usageError("--wait-timeout must not be negative, got %s", f.waitTimeout)
			}
			job, err := f.job(cmd.InOrStdin())
			if err != nil {
				return err
			}
			return withClient(cmd, g, "jetpilot submit", func(ctx context.Context, _ jetstream.JetStream, client *queue.Client) error {
				return f.submit(ctx, cmd, client, job)
			})
		},
	}
	f.register(cmd)
	return cmd
}

// submit publishes the job and, with --wait, waits for its result.
func (f *submitFlags) submit(ctx context.Context, cmd *cobra.Command, client *queue.Client, job schemas.Job) error {
	ack, err := client.Submit(ctx, job)
	if err != nil {
		return fmt.Errorf("submit job %s: %w", job.ID, err)
	}
	out := cmd.OutOrStdout()
	if !f.asJSON || !f.wait {
		note := ""
		if ack.Duplicate {
			note = " (duplicate: a job with this id was already submitted)"
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "submitted job %s%s\n", job.ID, note)
	}
	if !f.wait {
		if f.asJSON {
			return writeJSON(out, map[string]any{"job_id": job.ID, "stream": ack.Stream, "seq": ack.Seq, "duplicate": ack.Duplicate}, false)
		}
		fmt.Fprintln(out, job.ID)
		return nil
	}
	if ack.Duplicate && !f.attach {
		return &exitError{code: exitUsage, err: fmt.Errorf(
			"job %s was already submitted (JetStream dropped this copy as a duplicate id): not waiting for a job that may not be this one; "+
				"give --attach to wait for that job's result, or a new --id", job.ID)}
	}
	budget := waitBudget(job, f.waitTimeout)
	wctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	res, _, err := client.WaitNext(wctx, job.ID, 0)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return &exitError{code: exitGaveUp, err: fmt.Errorf(
				"gave up waiting for job %s after %s (--wait-timeout); it may still run: jetpilot job %s, or jetpilot results --job %s --follow",
				job.ID, budget, job.ID, job.ID)}
		}
		if errors.Is(err, context.Canceled) {
			return &exitError{code: exitFailed, err: fmt.Errorf("stopped waiting for job %s; its result will still be published", job.ID)}
		}
		return fmt.Errorf("wait for result of job %s: %w", job.ID, err)
	}
	// A result without a digest comes from an older worker: accept it.
	if !ack.Duplicate && res.JobDigest != "" && res.JobDigest != ack.Digest {
		return &exitError{code: exitUsage, err: fmt.Errorf(
			"the result found for job %s is someone else's job: its job_digest %s is not that of the job this submit published (%s); "+
				"another job used the same id; submit with a new --id", job.ID, res.JobDigest, ack.Digest)}
	}
	if err := printResult(out, res, f.asJSON); err != nil {
		return err
	}
	return &exitError{code: exitCodeFor(res.Status)}
}

func (f *submitFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	f.registerJob(fl)
	fl.StringVar(&f.id, "id", "", "job id (default: a new UUID); resubmitting an id within 24h is a no-op")
	fl.BoolVar(&f.wait, "wait", false, "wait for the result and exit with its code")
	fl.DurationVar(&f.waitTimeout, "wait-timeout", 0, "with --wait: give up (exit 75) after this long (default: the job's timeout, or 1h, plus 5m)")
	fl.BoolVar(&f.attach, "attach", false, "with --wait: when the id was already submitted, wait for that job's result instead of exiting 2")
	fl.BoolVar(&f.asJSON, "json", false, "print the result document as JSON")
}

// registerJob registers the flags a job is built from (see job); `schedule
// add` takes them too.
func (f *submitFlags) registerJob(fl *pflag.FlagSet) {
	fl.StringVar(&f.prompt, "prompt", "", "the prompt (without it, a whole job is read as JSON from stdin)")
	fl.StringVar(&f.profile, "profile", "", "profile (default \"default\")")
	fl.StringVar(&f.timeout, "timeout", "", "job timeout, a Go duration such as 15m (capped by the worker's --max-timeout)")
	fl.StringVar(&f.workdir, "workdir", "", "working directory of the session")
	fl.StringVar(&f.model, "model", "", "model id")
	fl.BoolVar(&f.pauseOnApproval, "pause-on-approval", false, "pause for a human on tool calls outside the allow-list")
	fl.StringSliceVar(&f.allowedTools, "allowed-tools", nil, "tools the job may run unattended (narrows the worker's list)")
	fl.StringArrayVar(&f.metadata, "metadata", nil, "k=v metadata echoed on every message about the job (repeatable)")
	fl.StringVar(&f.sessionKey, "session-key", "", "continue the conversation of this key (a chat thread): one session, one run at a time, in order")
	fl.StringVar(&f.concurrencyKey, "concurrency-key", "", "at most the policy's limit of runs at once with this key, fleet-wide (e.g. env:prod)")
}

// job builds the job from flags or stdin and validates it with the same
// decoder the workers use, so a bad job is refused here, field by field.
func (f *submitFlags) job(stdin io.Reader) (schemas.Job, error) {
	var data []byte
	if f.prompt == "" {
		if file, ok := stdin.(*os.File); ok {
			if st, err := file.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return schemas.Job{}, usageError("give --prompt, or a job as JSON on stdin")
			}
		}
		b, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return schemas.Job{}, fmt.Errorf("read job from stdin: %w", err)
		}
		if len(strings.TrimSpace(string(b))) == 0 {
			return schemas.Job{}, usageError("give --prompt, or a job as JSON on stdin (stdin was empty)")
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err == nil && doc["id"] == nil && f.id == "" {
			// A job from stdin without an id gets one, like a job from flags.
			doc["id"] = "job-" + uuid.NewString()
			b, _ = json.Marshal(doc)
		}
		data = b
	} else {
		md := map[string]string{}
		for _, kv := range f.metadata {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return schemas.Job{}, usageError("--metadata %q: want key=value", kv)
			}
			md[k] = v
		}
		id := f.id
		if id == "" {
			id = "job-" + uuid.NewString()
		}
		job := schemas.Job{ID: id, Prompt: f.prompt, Profile: f.profile, Timeout: f.timeout, Workdir: f.workdir,
			Model: f.model, PauseOnApproval: f.pauseOnApproval, AllowedTools: f.allowedTools,
			SessionKey: f.sessionKey, ConcurrencyKey: f.concurrencyKey}
		if len(md) > 0 {
			job.Metadata = md
		}
		b, err := json.Marshal(job)
		if err != nil {
			return schemas.Job{}, fmt.Errorf("encode job: %w", err)
		}
		data = b
	}
	job, err := schemas.DecodeJob(data)
	if err != nil {
		return schemas.Job{}, &exitError{code: exitUsage, err: fmt.Errorf("invalid job: %w", err)}
	}
	if f.prompt == "" && f.id != "" {
		job.ID = f.id
	}
	return job, nil
}

// Defaults of submit --wait's bound.
const (
	// defaultJobTimeout is the timeout workers give a job that sets none
	// (their default --max-timeout).
	defaultJobTimeout = time.Hour
	// queueAllowance is how long a job may wait for a worker and a
	// result to come back, on top of its timeout.
	queueAllowance = 5 * time.Minute
)

// waitBudget is how long submit --wait waits: --wait-timeout, else the
// job's timeout (defaultJobTimeout without one) plus queueAllowance.
func waitBudget(job schemas.Job, flag time.Duration) time.Duration {
	if flag > 0 {
		return flag
	}
	d, err := job.TimeoutDuration()
	if err != nil || d <= 0 {
		d = defaultJobTimeout
	}
	return d + queueAllowance
}

func exitCodeFor(s schemas.Status) int {
	switch s {
	case schemas.StatusCompleted:
		return exitOK
	case schemas.StatusPaused:
		return exitPaused
	case schemas.StatusTimedOut:
		return exitTimedOut
	case schemas.StatusRejected:
		return exitUsage
	default:
		return exitFailed
	}
}

// printResult prints a result as its JSON document or as a short summary.
// Everything a worker copied from the job, the agent or the agent server
// is escaped; the agent's output keeps its newlines and tabs.
func printResult(w io.Writer, res schemas.Result, asJSON bool) error {
	if asJSON {
		return writeJSON(w, res, true)
	}
	fmt.Fprintf(w, "job %s: %s", safeLine(res.JobID), safeLine(string(res.Status)))
	if res.ExitCode != nil {
		fmt.Fprintf(w, " (exit %d)", *res.ExitCode)
	}
	if res.DurationMS > 0 {
		fmt.Fprintf(w, " in %s", (time.Duration(res.DurationMS) * time.Millisecond).String())
	}
	fmt.Fprintln(w)
	if res.SessionID != "" {
		fmt.Fprintf(w, "  session %s run %s\n", safeLine(res.SessionID), safeLine(res.RunID))
	}
	if res.Usage != nil {
		fmt.Fprintf(w, "  turns %d, tokens %d, stop reason %s\n", res.TotalTurns, res.Usage.TotalTokens, safeLine(res.StopReason))
	}
	if res.ToolCalls.Accepted+res.ToolCalls.Rejected > 0 {
		fmt.Fprintf(w, "  tool calls: %d accepted, %d rejected\n", res.ToolCalls.Accepted, res.ToolCalls.Rejected)
	}
	if res.PauseReason != nil {
		for _, c := range res.PauseReason.PendingToolCalls {
			fmt.Fprintf(w, "  waiting for approval: %s %s (%s)\n", safeLine(c.Name), safeLine(string(c.Arguments)), safeLine(c.ID))
		}
		if res.ResumeHint != "" {
			fmt.Fprintf(w, "  resume: %s\n", safeLine(res.ResumeHint))
		}
	}
	if res.Error != nil {
		fmt.Fprintf(w, "  error %s: %s\n", safeLine(res.Error.Code), safeLine(res.Error.Message))
		for _, fe := range res.Error.Fields {
			fmt.Fprintf(w, "    %s\n", safeLine(fe.String()))
		}
	} else if res.Stderr != "" {
		fmt.Fprintf(w, "  stderr: %s\n", safeBlock(strings.TrimRight(res.Stderr, "\n")))
	}
	for _, warn := range res.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", safeLine(warn))
	}
	if len(res.Metadata) > 0 {
		fmt.Fprintf(w, "  metadata: %s\n", metadataLine(res.Metadata))
	}
	if res.Stdout != "" {
		fmt.Fprintf(w, "--- agent output ---\n%s\n", safeBlock(strings.TrimRight(res.Stdout, "\n")))
	}
	return nil
}
