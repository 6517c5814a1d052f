package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// traceMessage begins the trace of one message of kind (job, decision or
// control: the source it was pulled from). The message's span is the child
// of the traceparent in its headers, else, for a decision or control
// message, of the job's first span as its run record keeps it, else a root.
// As the record is read by the fetch, the span starts once fetched returns,
// dated from the delivery, with a "fetch" child covering the fetch. fetched
// returns the context the phase runs and settles under (so results and
// events carry its traceparent) and what ends the span. With no tracer
// installed no span is made (nor its attributes built), and an incoming
// trace context still reaches the log lines, the run record and the
// messages the phase publishes. A new job logs its start here: one info
// line.
func (w *Worker) traceMessage(ctx context.Context, kind string, msg jetstream.Msg) (context.Context, func(*phase, *outcome) (context.Context, func())) {
	start := time.Now()
	ctx = tracing.Extract(ctx, msg.Headers())
	return ctx, func(p *phase, o *outcome) (context.Context, func()) {
		if !trace.SpanContextFromContext(ctx).IsValid() && p.run != nil {
			ctx = tracing.FromTraceParent(ctx, p.run.Record.TraceParent)
		}
		var span trace.Span
		if tracing.Enabled() {
			fetchedAt := time.Now()
			ctx, span = tracing.Start(ctx, kind, trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("jetpilot.job_id", p.job.ID), attribute.Int("jetpilot.attempt", p.attempt),
					attribute.String("messaging.destination.name", msg.Subject())))
			_, fs := tracing.Start(ctx, "fetch", trace.WithTimestamp(start))
			fs.End(trace.WithTimestamp(fetchedAt))
		}
		p.log = tracing.Logger(ctx, p.log)
		isJob := kind == msgJob
		if isJob && p.run != nil && p.run.Record.TraceParent == "" && trace.SpanContextFromContext(ctx).IsValid() {
			// Recorded with the run's first transition: later phases join
			// this trace.
			p.run.Record.TraceParent = tracing.TraceParent(ctx)
		}
		if o == nil && isJob && p.run != nil && p.run.Stored != queue.RunRunning && p.run.Stored != queue.RunStarting {
			p.log.Info("job started", "profile", p.job.ProfileOrDefault(), "model", p.job.Model, "timeout", p.run.Record.Deadline.Sub(p.start).Round(time.Second).String())
		}
		return ctx, func() {
			if span == nil {
				return
			}
			if o != nil && o.kind == outReject {
				span.SetAttributes(attribute.String("jetpilot.outcome", "rejected"))
			}
			span.End()
		}
	}
}

// The kinds of message a worker pulls, each from its own consumer; also
// the names of their spans.
const (
	msgJob      = "job"
	msgDecision = "decision"
	msgControl  = "control"
)

// approvalWaitSpan records a settled approval's wait, from its request to
// now, as a span of the job's trace (not of the message that settled it,
// which came at its end).
func (w *Worker) approvalWaitSpan(ctx context.Context, p *phase) {
	rec := &p.run.Record
	parent := ctx
	if rec.TraceParent != "" {
		parent = tracing.FromTraceParent(ctx, rec.TraceParent)
	}
	_, span := tracing.Start(parent, "approval.wait", trace.WithTimestamp(rec.PausedAt),
		trace.WithAttributes(attribute.String("jetpilot.approval_id", p.settledAs.ApprovalID),
			attribute.String("jetpilot.outcome", p.settledAs.Decision),
			attribute.Int("jetpilot.phase", rec.Phase)))
	span.End()
}
