package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// exitCallRejected is `policy test`'s exit code for a job the policy
// accepts whose --call it would reject.
const exitCallRejected = 3

// maxInputBytes bounds a policy or job read from a file or stdin.
const maxInputBytes = 16 << 20

func newPolicyCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Store, show and dry-run the fleet's policy (KV bucket <prefix>_policy)",
		Long: `The fleet's policy (schemas/policy.v1.json, YAML or JSON) decides every tool
call and caps every job. It lives in the KV bucket <prefix>_policy; its version
is the KV revision, and every worker applies a new one within seconds.`,
	}
	cmd.AddCommand(newPolicySetCmd(g), newPolicyGetCmd(g), newPolicyTestCmd(g))
	return cmd
}

func newPolicySetCmd(g *globalFlags) *cobra.Command {
	var asJSON bool
	var ifVersion uint64
	cmd := &cobra.Command{
		Use:   "set FILE",
		Short: "Validate a policy document and store it as the fleet's policy",
		Long: `Validates FILE (YAML or JSON; - reads stdin) and stores it, as written, as the
fleet's new policy; every worker applies it within seconds. Creates the policy
bucket if it does not exist.

The write is a compare-and-set on the version read just before it: if another
admin stores a version in between, nothing is stored and the command says so.
--if-version N stores only if version N is the one stored now (0: only if none
is), for a document edited from what ` + "`policy get`" + ` showed.

Exit codes: 0 stored; 1 not stored (the stored policy changed meanwhile, or
NATS failed); 2 usage error or an invalid policy (every problem is listed on
stderr, nothing is stored).`,
		Args: exactArgs(1, "give the policy file (or - for stdin)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := readInput(cmd, args[0], "policy")
			if err != nil {
				return err
			}
			// Validate before connecting: a typo is found without NATS.
			if _, err := policy.Parse(data); err != nil {
				return &exitError{code: exitUsage, err: describeProblems("invalid policy "+inputName(args[0])+"; nothing was stored", err)}
			}
			var opts []queue.SetOpt
			if cmd.Flags().Changed("if-version") {
				opts = append(opts, queue.IfVersion(ifVersion))
			}
			qcfg := g.queueConfig()
			return withConn(cmd, g, "jetpilot policy set", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				if err := queue.EnsurePolicyBucket(ctx, js, qcfg); err != nil {
					return fmt.Errorf("policy set: %w", err)
				}
				ps, err := queue.NewPolicyStore(ctx, js, qcfg)
				if err != nil {
					return fmt.Errorf("policy set: %w", err)
				}
				res, err := ps.Set(ctx, data, opts...)
				if err != nil {
					var ve *schemas.ValidationError
					if errors.As(err, &ve) {
						return &exitError{code: exitUsage, err: describeProblems("invalid policy "+inputName(args[0])+"; nothing was stored", err)}
					}
					return fmt.Errorf("policy set: %w", err)
				}
				// Every policy change is in the audit stream's policy chain.
				if audit, err := queue.NewAuditLog(ctx, js, qcfg); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "jetpilot: warning: version %d stored, but not audited: %v\n", res.Version, err)
				} else if _, err := audit.Append(ctx, schemas.AuditRecord{Kind: schemas.AuditPolicySet, PolicyVersion: res.Version,
					At: time.Now().UTC(), Worker: "jetpilot policy set", Reason: fmt.Sprintf("replaced version %d; %s", res.Replaced, policyDigest(data))}); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "jetpilot: warning: version %d stored, but not audited: %v\n", res.Version, err)
				}
				out := cmd.OutOrStdout()
				if asJSON {
					return printJSON(out, map[string]any{"bucket": ps.Bucket(), "version": res.Version, "replaced": res.Replaced})
				}
				was := "no policy was stored before"
				if res.Replaced != 0 {
					was = fmt.Sprintf("replaced version %d", res.Replaced)
				}
				fmt.Fprintf(out, "policy version %d stored (%s)\n", res.Version, was)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"bucket","version","replaced"} as JSON`)
	cmd.Flags().Uint64Var(&ifVersion, "if-version", 0, "store only if this version is the one stored now (0: only if no policy is stored)")
	return cmd
}

// policyGetJSON is `policy get --json`'s document.
type policyGetJSON struct {
	Bucket   string `json:"bucket"`
	Stored   bool   `json:"stored"`
	Version  uint64 `json:"version,omitempty"`
	StoredAt string `json:"stored_at,omitempty"`
	// Text is the document exactly as stored.
	Text string `json:"text,omitempty"`
	// Document is the document as parsed, absent when it does not parse.
	Document *policy.Document     `json:"document,omitempty"`
	Problems []schemas.FieldError `json:"problems,omitempty"`
}

func newPolicyGetCmd(g *globalFlags) *cobra.Command {
	var asJSON bool
	var version uint64
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Print the stored policy document, as stored",
		Long: `Prints the stored policy document exactly as it was stored (YAML stays YAML),
on stdout, and its version and time on stderr, so that
` + "`jetpilot policy get > p.yaml`" + ` gives a file to edit and set again.
--version N prints an earlier version while the bucket keeps it (the last 16).
--json prints one JSON object: bucket, stored, version, stored_at, text (as
stored), document (as parsed) and problems.

When no policy is stored it says so and exits 1: workers then use the policy
of their flags (--allowed-tools, --max-timeout), or else the built-in one
(read-only tools run, every other call waits for a human). A stored document
that does not parse (written around ` + "`policy set`" + `) is printed with its
problems, and exits 1: workers refuse work until a valid one is stored.

Exit codes: 0 printed; 1 none stored, not valid, or NATS failed; 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			qcfg := g.queueConfig()
			return withConn(cmd, g, "jetpilot policy get", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
				bucket := qcfg.PolicyBucket()
				sp, err := readStored(ctx, js, qcfg, version)
				if errors.Is(err, queue.ErrNoPolicy) {
					if asJSON {
						if err := printJSON(out, policyGetJSON{Bucket: bucket}); err != nil {
							return err
						}
					}
					what := noPolicyText(bucket)
					if version != 0 {
						what = fmt.Sprintf("version %d of the policy is not in KV bucket %s (it keeps the last %d versions, and deletions are not policies)",
							version, bucket, queue.PolicyHistory)
					}
					return &exitError{code: exitFailed, err: errors.New(what)}
				}
				if err != nil {
					return fmt.Errorf("policy get: %w", err)
				}
				p, perr := policy.Parse(sp.Data)
				var problems []schemas.FieldError
				var ve *schemas.ValidationError
				if errors.As(perr, &ve) {
					problems = ve.Problems
				} else if perr != nil {
					problems = []schemas.FieldError{{Reason: perr.Error()}}
				}
				if asJSON {
					doc := policyGetJSON{Bucket: bucket, Stored: true, Version: sp.Version, StoredAt: sp.StoredAt.UTC().Format(time.RFC3339),
						Text: string(sp.Data), Problems: problems}
					if p != nil {
						d := p.Document()
						doc.Document = &d
					}
					if err := printJSON(out, doc); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(errOut, "policy version %d, stored %s in KV bucket %s\n", sp.Version, sp.StoredAt.UTC().Format(time.RFC3339), bucket)
					text := safeBlock(string(sp.Data))
					if !strings.HasSuffix(text, "\n") {
						text += "\n"
					}
					fmt.Fprint(out, text)
				}
				if perr != nil {
					return &exitError{code: exitFailed, err: describeProblems(fmt.Sprintf(
						"policy version %d does not parse; workers refuse work until a valid policy is stored", sp.Version), perr)}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (text as stored, document as parsed, version, problems)")
	cmd.Flags().Uint64Var(&version, "version", 0, "print this earlier version instead of the current one")
	return cmd
}

// readStored reads the current stored policy (version 0) or an earlier
// version; a missing bucket is no policy.
func readStored(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, version uint64) (queue.StoredPolicy, error) {
	ps, err := queue.NewPolicyStore(ctx, js, qcfg)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return queue.StoredPolicy{}, queue.ErrNoPolicy
	}
	if err != nil {
		return queue.StoredPolicy{}, err
	}
	if version != 0 {
		return ps.StoredVersion(ctx, version)
	}
	return ps.Stored(ctx)
}

func noPolicyText(bucket string) string {
	return "no policy is stored in KV bucket " + bucket + ": workers use the policy of their flags (--allowed-tools, --max-timeout), " +
		"or else the built-in one (read-only tools run, every other call waits for a human); store one with `jetpilot policy set FILE`"
}

func newPolicyTestCmd(g *globalFlags) *cobra.Command {
	var call, file string
	cmd := &cobra.Command{
		Use:   "test JOB.json [--call TOOL [ARGS_JSON]] [--file POLICY]",
		Short: "Show what the policy would do to a job, and to one tool call of it",
		Long: `Reads a job (JOB.json, or - for stdin) and prints what the policy would do to
it, without running anything: "accepted" with the values the policy fills in
(model, max_turns, workdir) and the effective timeout, or "rejected" with each
field and why. With --call TOOL [ARGS_JSON] (ARGS_JSON default {}), also the
decision for that call in that job (accept, reject or ask), the rule that
decided, what the model would read, and for ask the approvers and quorum.

The policy is the stored one, or the document in --file (YAML or JSON, not
stored). With neither stored nor --file, the built-in policy is used and a
note says so (workers with --allowed-tools or --max-timeout use those).

Exit codes: 0 the job is accepted (and the call, if any, accepted or asked);
1 error (NATS, or the stored policy does not parse); 2 the job would be
rejected (by the policy, or as an invalid job), or a usage error such as an
invalid --file; 3 the job is accepted but the call would be rejected.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usageError("give the job file (or - for stdin), and with --call TOOL at most the call's ARGS_JSON")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			argsJSON := "{}"
			if len(args) == 2 {
				if call == "" {
					return usageError("ARGS_JSON %s without --call TOOL", safeLine(args[1]))
				}
				argsJSON = args[1]
			}
			if call != "" && !json.Valid([]byte(argsJSON)) {
				return usageError("ARGS_JSON for --call %s is not JSON: %s", safeLine(call), safeLine(argsJSON))
			}
			data, err := readInput(cmd, args[0], "job")
			if err != nil {
				return err
			}
			job, err := schemas.DecodeJob(data)
			if err != nil {
				return &exitError{code: exitUsage, err: describeProblems("job "+inputName(args[0])+" would be rejected as invalid", err)}
			}
			t := policyTest{job: job, call: call, args: argsJSON}
			if file != "" {
				pdata, err := readInput(cmd, file, "policy")
				if err != nil {
					return err
				}
				p, err := policy.Parse(pdata)
				if err != nil {
					return &exitError{code: exitUsage, err: describeProblems("invalid policy "+inputName(file), err)}
				}
				t.p, t.from = p, "policy from "+inputName(file)+" (not stored)"
				return t.run(cmd.OutOrStdout())
			}
			qcfg := g.queueConfig()
			return withConn(cmd, g, "jetpilot policy test", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				sp, err := readStored(ctx, js, qcfg, 0)
				switch {
				case errors.Is(err, queue.ErrNoPolicy):
					t.p = policy.Default()
					t.from = "no policy is stored in KV bucket " + qcfg.PolicyBucket() +
						": the built-in policy (workers started with --allowed-tools or --max-timeout use those instead)"
				case err != nil:
					return fmt.Errorf("policy test: %w", err)
				default:
					p, err := policy.Parse(sp.Data)
					if err != nil {
						return &exitError{code: exitFailed, err: describeProblems(fmt.Sprintf(
							"stored policy version %d does not parse (workers refuse work until a valid one is stored)", sp.Version), err)}
					}
					p.Version, p.Source = sp.Version, policy.SourceStored
					t.p, t.from = p, fmt.Sprintf("policy version %d (stored in KV bucket %s)", sp.Version, qcfg.PolicyBucket())
				}
				return t.run(cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().StringVar(&call, "call", "", "a tool call to decide: TOOL, with its arguments as the second argument (JSON, default {})")
	cmd.Flags().StringVar(&file, "file", "", "test this policy document (YAML or JSON; - for stdin) instead of the stored one")
	return cmd
}

// policyTest is one `policy test`: a job, maybe a call, and the policy.
type policyTest struct {
	job        schemas.Job
	call, args string
	p          *policy.Policy
	from       string
}

// run prints what the policy does to the job and the call, and returns the
// exit code as an *exitError (nil for 0).
func (t policyTest) run(out io.Writer) error {
	fmt.Fprintln(out, t.from)
	code := exitOK
	jobID := safeLine(t.job.ID)
	if err := t.p.CheckJob(t.job); err != nil {
		var ve *schemas.ValidationError
		if !errors.As(err, &ve) {
			return fmt.Errorf("check job %s: %w", jobID, err)
		}
		fmt.Fprintf(out, "job %s: rejected (%s)\n", jobID, ve.Code)
		for _, p := range ve.Problems {
			fmt.Fprintf(out, "  %s\n", safeLine(p.String()))
		}
		code = exitUsage
	} else {
		applied := t.p.Apply(t.job)
		fmt.Fprintf(out, "job %s: accepted\n", jobID)
		model, modelFrom := applied.Model, "the job's"
		if t.job.Overrides != nil && t.job.Overrides.Model != "" {
			model, modelFrom = t.job.Overrides.Model, "the job's overrides.model"
		} else if t.job.Model == "" && model != "" {
			modelFrom = "the policy's, the job names none"
		}
		fmt.Fprintf(out, "  model: %s\n", valueFrom(model, modelFrom))
		turns, turnsFrom := 0, "the job's"
		if applied.Overrides != nil {
			turns = applied.Overrides.MaxTurns
		}
		if t.job.Overrides == nil || t.job.Overrides.MaxTurns == 0 {
			turnsFrom = "the policy's jobs.max_turns, the job sets none"
		}
		turnsText := ""
		if turns > 0 {
			turnsText = strconv.Itoa(turns)
		}
		fmt.Fprintf(out, "  max_turns: %s\n", valueFrom(turnsText, turnsFrom))
		workdirFrom := "the job's"
		if t.job.Workdir == "" {
			workdirFrom = "the policy's first jobs.workdir_roots, the job sets none"
		}
		fmt.Fprintf(out, "  workdir: %s\n", valueFrom(applied.Workdir, workdirFrom))
		timeoutFrom := "the job's"
		if d, err := t.job.TimeoutDuration(); err != nil || d <= 0 {
			timeoutFrom = "the policy's jobs.max_timeout, the job sets none"
		}
		fmt.Fprintf(out, "  timeout: %s (%s)\n", t.p.Timeout(t.job), timeoutFrom)
	}
	if t.call == "" {
		return exitWith(code)
	}
	d := t.p.Decide(policy.NarrowingOf(t.job), policy.Call{Name: t.call, Arguments: json.RawMessage(t.args)})
	v := d.Verdict
	rule := "rule " + safeLine(v.Rule)
	if v.Rule == policy.DefaultRule {
		rule = "no rule matched: the policy's tools.default"
	}
	fmt.Fprintf(out, "call %s %s: %s (%s)\n", safeLine(t.call), safeLine(t.args), d.Kind, rule)
	switch d.Kind {
	case policy.Reject:
		if v.Action == policy.Allow {
			fmt.Fprintln(out, "  the policy allows it; the job's allowed_tools or overrides.auto_approve leave it out")
		}
		fmt.Fprintf(out, "  the model reads: %s\n", safeLine(d.Content))
		if code == exitOK {
			code = exitCallRejected
		}
	case policy.Ask:
		if v.Action == policy.Allow {
			fmt.Fprintln(out, "  the policy allows it; the job's lists leave it out, and with pause_on_approval a human decides")
			break
		}
		approvers := "any human (decisions: unsigned)"
		if len(v.Approvers) > 0 {
			approvers = safeLine(strings.Join(v.Approvers, ", "))
		}
		requester := "the job's requester may be one of them"
		if !v.RequesterMayApprove {
			requester = "the job's requester may not be one of them"
		}
		fmt.Fprintf(out, "  approvers: %s; quorum %d; %s\n", approvers, max(v.Quorum, 1), requester)
	}
	return exitWith(code)
}

func valueFrom(v, from string) string {
	if v == "" {
		return "(none: the agent server's default)"
	}
	return safeLine(v) + " (" + from + ")"
}

func exitWith(code int) error {
	if code == exitOK {
		return nil
	}
	return &exitError{code: code}
}

// readInput reads a file, or stdin for "-", bounded.
func readInput(cmd *cobra.Command, name, what string) ([]byte, error) {
	var r io.Reader
	if name == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, usageError("read %s: %s", what, safeLine(err.Error()))
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, inputName(name), err)
	}
	if len(data) > maxInputBytes {
		return nil, usageError("%s %s is over %d MiB", what, inputName(name), maxInputBytes>>20)
	}
	return data, nil
}

// inputName names a file argument in messages; "-" is stdin.
func inputName(name string) string {
	if name == "-" {
		return "from stdin"
	}
	return safeLine(name)
}

// describeProblems is err with every field problem on a line of its own.
func describeProblems(what string, err error) error {
	var ve *schemas.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) == 0 {
		return fmt.Errorf("%s: %s", what, safeLine(err.Error()))
	}
	var b strings.Builder
	b.WriteString(what)
	b.WriteString(":")
	for _, p := range ve.Problems {
		b.WriteString("\n  ")
		b.WriteString(safeLine(p.String()))
	}
	return errors.New(b.String())
}

// exactArgs is cobra.ExactArgs with a usage error that says what to give.
func exactArgs(n int, hint string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("%s", hint)
		}
		return nil
	}
}

// policyDigest names a stored document by its SHA-256, so the audit chain
// says which text was stored.
func policyDigest(data []byte) string {
	h := sha256.Sum256(data)
	return "sha256 " + hex.EncodeToString(h[:])
}
