package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func newAuditCmd(g *globalFlags) *cobra.Command {
	var asJSON, policy bool
	cmd := &cobra.Command{
		Use:   "audit (JOB_ID | --policy)",
		Short: "Print a job's audit chain, or the policy changes', and verify it",
		Long: `Prints every audit record of the job (approvals requested, human decisions
applied or refused with the approver's name and key, expiries, cancels), or
with --policy every policy change, one line each, and verifies the chain:
records numbered from 1 without a gap, each holding the SHA-256 of the one
before it.

Exits 0 when the chain is intact, 1 when a record is missing or altered
(the message says which) or there are no records, 2 for a usage error.
An intact chain ends with its head, the SHA-256 of the newest record: note
it, since a later change to that record, or a loss of the newest records,
shows only as another head.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			jobID := ""
			switch {
			case policy && len(args) > 0:
				return usageError("audit: give a JOB_ID or --policy, not both")
			case !policy && len(args) != 1:
				return usageError("audit: give one JOB_ID (or --policy for the policy changes)")
			case !policy:
				jobID = args[0]
				if err := schemas.ValidateJobID(jobID); err != nil {
					return usageError("audit: %v", err)
				}
			}
			cfg := g.queueConfig().WithDefaults()
			return withConn(cmd, g, "jetpilot audit", func(ctx context.Context, _ *slog.Logger, _ *nats.Conn, js jetstream.JetStream) error {
				l, err := queue.NewAuditLog(ctx, js, cfg)
				if err != nil {
					return err
				}
				entries, err := l.Entries(ctx, jobID)
				if errors.Is(err, queue.ErrAuditNotFound) {
					if jobID == "" {
						return fmt.Errorf("no policy changes are recorded in stream %s", cfg.AuditStream())
					}
					return fmt.Errorf("job %s has no audit records in stream %s: an unknown job, one that never asked a human, or one older than the stream keeps", jobID, cfg.AuditStream())
				}
				if err != nil {
					return err
				}
				records, raws := queue.SplitEntries(entries)
				rep := queue.VerifyAudit(jobID, records, raws)
				out := cmd.OutOrStdout()
				if asJSON {
					err = printAuditJSON(out, cfg, jobID, entries, rep)
				} else {
					err = printAudit(out, cfg, jobID, entries, rep)
				}
				if err != nil {
					return err
				}
				if !rep.Intact {
					return &exitError{code: exitFailed, err: rep.Err()}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&policy, "policy", false, "the chain of policy changes instead of a job's")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the records and the verification as one JSON document")
	return cmd
}

// auditTime is how a record's time is printed: fixed width, UTC.
const auditTime = "2006-01-02T15:04:05.000Z07:00"

func printAudit(w io.Writer, cfg queue.Config, jobID string, entries []queue.AuditEntry, rep queue.VerifyReport) error {
	subject, name := cfg.PolicyAuditSubject(), "policy changes"
	if jobID != "" {
		subject, name = cfg.AuditSubject(jobID), "audit chain of job "+auditText(jobID)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (stream %s, subject %s): %d record%s\n", name, cfg.AuditStream(), auditText(subject), len(entries), auditPlural(len(entries)))
	for _, e := range entries {
		b.WriteString(auditLine(e))
		b.WriteByte('\n')
	}
	if rep.Intact {
		fmt.Fprintf(&b, "chain intact: records 1 to %d, each prev the SHA-256 of the record before; head sha256 %s\n", rep.Records, rep.Head)
	} else {
		fmt.Fprintf(&b, "chain BROKEN at record %d (%s): %s\n", rep.BadSeq, rep.Problem, auditText(rep.Detail))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// auditLine is one record: seq, time, kind, then the fields it has.
func auditLine(e queue.AuditEntry) string {
	if e.DecodeErr != nil {
		return fmt.Sprintf("%4s  (stream sequence %d) not an audit record: %s", "?", e.StreamSeq, auditQuote(auditTruncate(string(e.Raw), 120)))
	}
	r := e.Record
	var b strings.Builder
	fmt.Fprintf(&b, "%4d  %s  %s", r.Seq, r.At.UTC().Format(auditTime), auditText(string(r.Kind)))
	field := func(k, v string) {
		if v != "" {
			b.WriteString("  " + k + "=" + v)
		}
	}
	field("approval", auditText(r.ApprovalID))
	if r.Approver.Name != "" {
		field("approver", auditQuote(r.Approver.Name))
	}
	field("key", auditText(r.Approver.Key))
	field("rule", auditText(r.Rule))
	if r.PolicyVersion > 0 {
		field("policy", "v"+strconv.FormatUint(r.PolicyVersion, 10))
	}
	if r.Decision != "" {
		field("decision", auditQuote(r.Decision))
	}
	field("code", auditText(r.Code))
	if r.Count > 0 {
		field("count", strconv.FormatInt(r.Count, 10))
	}
	if r.Reason != "" {
		field("reason", auditQuote(r.Reason))
	}
	if r.PendingDigest != "" {
		field("pending", auditText(auditTruncate(r.PendingDigest, 12)))
	}
	if r.Worker != "" {
		field("worker", auditQuote(r.Worker))
	}
	return b.String()
}

// auditJSONEntry is one record in `audit --json`: the record as stored,
// where, and its SHA-256 (of the stored bytes, which the indented JSON
// printed here is not).
type auditJSONEntry struct {
	StreamSeq uint64          `json:"stream_seq"`
	Stored    time.Time       `json:"stored"`
	SHA256    string          `json:"sha256"`
	Record    json.RawMessage `json:"record,omitempty"`
	// Raw is the payload when it is not JSON at all.
	Raw string `json:"raw,omitempty"`
}

func printAuditJSON(w io.Writer, cfg queue.Config, jobID string, entries []queue.AuditEntry, rep queue.VerifyReport) error {
	subject := cfg.PolicyAuditSubject()
	if jobID != "" {
		subject = cfg.AuditSubject(jobID)
	}
	doc := struct {
		JobID   string             `json:"job_id"`
		Stream  string             `json:"stream"`
		Subject string             `json:"subject"`
		Records []auditJSONEntry   `json:"records"`
		Verify  queue.VerifyReport `json:"verify"`
	}{JobID: jobID, Stream: cfg.AuditStream(), Subject: subject, Records: []auditJSONEntry{}, Verify: rep}
	for _, e := range entries {
		je := auditJSONEntry{StreamSeq: e.StreamSeq, Stored: e.Stored, SHA256: queue.AuditHash(e.Raw)}
		if json.Valid(e.Raw) {
			je.Record = e.Raw
		} else {
			je.Raw = string(e.Raw)
		}
		doc.Records = append(doc.Records, je)
	}
	var buf bytes.Buffer
	if err := printJSON(&buf, doc); err != nil {
		return err
	}
	_, err := w.Write(auditJSONSafe(buf.Bytes()))
	return err
}

// auditText is s safe to print to a terminal: C0 and C1 control
// characters, DEL, Unicode bidi controls and line/paragraph separators
// become \x.. or \u.... escapes, bytes that are not UTF-8 become \x..,
// and a backslash becomes \\ so that no escape is ambiguous. Everything
// else, including other non-ASCII text, is kept.
func auditText(s string) string {
	return auditEscape(s, false)
}

// auditQuote is auditText in double quotes, with '"' escaped too.
func auditQuote(s string) string {
	return `"` + auditEscape(s, true) + `"`
}

func auditEscape(s string, quote bool) string {
	if !auditNeedsEscape(s, quote) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case quote && r == '"':
			b.WriteString(`\"`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case auditUnsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func auditNeedsEscape(s string, quote bool) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\\' || (quote && r == '"') || r < 0x20 || r == 0x7f || auditUnsafeRune(r) {
			return true
		}
		i += size
	}
	return false
}

// auditUnsafeRune reports the non-ASCII runes a terminal would act on or that
// reorder text: C1 controls, the bidi embeddings, overrides, isolates and
// marks, and the line and paragraph separators.
func auditUnsafeRune(r rune) bool {
	switch {
	case r >= 0x80 && r <= 0x9f: // C1
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f: // ALM, LRM, RLM
		return true
	case r >= 0x202a && r <= 0x202e: // LRE, RLE, PDF, LRO, RLO
		return true
	case r >= 0x2066 && r <= 0x2069: // LRI, RLI, FSI, PDI
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

// auditJSONSafe rewrites, inside JSON text, every rune auditText would
// escape and encoding/json leaves as is (C1 controls, DEL, bidi controls)
// as a \u escape, and a byte that is not UTF-8 as \ufffd. Such runes and
// bytes can only be inside strings, where the escape means the same
// character, so the document means the same.
func auditJSONSafe(data []byte) []byte {
	var b bytes.Buffer
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\ufffd`)
		case r == 0x7f || (size > 1 && auditUnsafeRune(r)):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.Write(data[i : i+size])
		}
		i += size
	}
	return b.Bytes()
}

// auditTruncate keeps the first max runes of s, marking a cut with "…".
func auditTruncate(s string, max int) string {
	n := 0
	for i := range s {
		if n == max {
			return s[:i] + "…"
		}
		n++
	}
	return s
}

func auditPlural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
