package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"
	// Time zones are read on this machine too, to refuse a bad --timezone
	// before the server does: without the system's tz database as well.
	_ "time/tzdata"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func newScheduleCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Run a job on a cron schedule (JetStream message schedules, nats-server 2.14+)",
		Long: `Schedules are JetStream message schedules: the NATS server itself fires each
one, once per firing, in a cluster too; jetpilot runs no timer. A schedule is a
job template stored in the SCHEDULES stream; each firing is one job, with the
id <NAME>:<RFC 3339 UTC second> and the metadata jetpilot.schedule=<NAME>.
Run ` + "`jetpilot setup`" + ` once first.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newScheduleAddCmd(g), newScheduleLsCmd(g), newScheduleRmCmd(g))
	return cmd
}

func newScheduleAddCmd(g *globalFlags) *cobra.Command {
	f := &submitFlags{}
	var pattern, tz string
	cmd := &cobra.Command{
		Use:   "add NAME --cron PATTERN [--timezone ZONE] [job flags]",
		Short: "Add a schedule: a job (from flags, or as JSON on stdin, without an id) fired on a cron pattern",
		Long: `Adds a schedule. NAME is 1-64 letters, digits, '_' or '-' (it ends a NATS
subject and starts the firings' job ids). The pattern has 6 fields, seconds
first: "0 0 9 * * MON-FRI" is 09:00 on weekdays; also @yearly, @monthly,
@weekly, @daily, @hourly and "@every 10m" (at least 1s, no time zone). It is
read in --timezone (an IANA name, default UTC). The job is built like
` + "`jetpilot submit`" + `'s, from flags or as JSON on stdin, and validated as its
firings will be; it has no id (the worker names each firing). A name in use is
refused: remove it first.`,
		Args: exactArgs(1, "give the schedule's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := queue.ValidateScheduleName(name); err != nil {
				return usageError("%w", err)
			}
			if pattern == "" {
				return usageError("give --cron, such as --cron \"0 0 9 * * MON-FRI\"")
			}
			next, err := queue.ValidateCron(pattern, tz)
			if err != nil {
				return usageError("%w", err)
			}
			job, err := scheduledJob(f, cmd.InOrStdin())
			if err != nil {
				return err
			}
			if _, err := queue.CheckTemplate(name, job); err != nil {
				return usageError("invalid job: %w", err)
			}
			sch := queue.Schedule{Name: name, Cron: pattern, TimeZone: tz, Job: job}
			return withConn(cmd, g, "jetpilot schedule add", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				if err := queue.NewSchedules(js, g.queueConfig()).Add(ctx, sch); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "added schedule %s: %q in %s, profile %s; next firing %s\n",
					name, pattern, zoneName(tz), job.ProfileOrDefault(), next.Next(time.Now()).UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&pattern, "cron", "", `6-field cron pattern, seconds first ("0 0 9 * * MON-FRI"), or @daily, @hourly, "@every 10m", ...`)
	fl.StringVar(&tz, "timezone", "", "IANA time zone the pattern is read in, such as Europe/Berlin (default UTC)")
	f.registerJob(fl)
	return cmd
}

// scheduledJob builds a schedule's job the way submit builds one, from
// flags or stdin, and takes the id submit makes up away again: a firing's
// id is the worker's to set, so a job on stdin must not have one.
func scheduledJob(f *submitFlags, stdin io.Reader) (schemas.Job, error) {
	var seen bytes.Buffer
	if file, ok := stdin.(*os.File); ok && f.prompt == "" {
		if st, err := file.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return schemas.Job{}, usageError("give --prompt, or a job as JSON on stdin")
		}
	}
	job, err := f.job(io.TeeReader(stdin, &seen))
	if err != nil {
		return schemas.Job{}, err
	}
	if f.prompt == "" && schemas.JobIDOf(seen.Bytes()) != "" {
		return schemas.Job{}, usageError("the job on stdin has an id: a schedule's job has none (each firing is named <NAME>:<time>)")
	}
	job.ID = ""
	return job, nil
}

func zoneName(tz string) string {
	if tz == "" {
		return "UTC"
	}
	return tz
}

func newScheduleLsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the schedules: name, pattern, time zone, profile, next and last firing",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withConn(cmd, g, "jetpilot schedule ls", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				list, err := queue.NewSchedules(js, g.queueConfig()).List(ctx)
				if err != nil {
					return err
				}
				printSchedules(cmd.OutOrStdout(), list)
				return nil
			})
		},
	}
}

// printSchedules prints one line per schedule. A definition can be written
// into the stream by hand: its pattern and time zone are escaped.
func printSchedules(w io.Writer, list []queue.Schedule) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no schedules")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCRON\tTIMEZONE\tPROFILE\tNEXT\tLAST")
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, s := range list {
		profile := safeLine(s.Job.ProfileOrDefault())
		if s.Invalid != nil {
			profile = "(invalid job: " + safeLine(s.Invalid.Error()) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, safeLine(s.Cron), safeLine(zoneName(s.TimeZone)), profile, when(s.Next), when(s.LastFired))
	}
	_ = tw.Flush()
}

func newScheduleRmCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a schedule: it fires no more (a firing already queued still runs)",
		Args:  exactArgs(1, "give the schedule's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := queue.ValidateScheduleName(name); err != nil {
				return usageError("%w", err)
			}
			return withConn(cmd, g, "jetpilot schedule rm", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				err := queue.NewSchedules(js, g.queueConfig()).Remove(ctx, name)
				if errors.Is(err, queue.ErrScheduleNotFound) {
					return fmt.Errorf("no schedule named %s (see jetpilot schedule ls)", name)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed schedule %s\n", name)
				return nil
			})
		},
	}
}
