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

// traceMessage begins the trace of one message. The message's span (job,
// decision or control) is the child of the traceparent in its headers,
// else, for a decision or control message, of the job's first span as its
// run record keeps it, else a root. As the record is read by the fetch,
// the span starts once fetched returns, dated from the delivery, with a
// "fetch" child covering the fetch. fetched returns the context the phase
// runs and settles under (so results and events carry its traceparent)
// and what ends the span. A new job logs its start here: one info line.
func (w *Worker) traceMessage(ctx context.Context, msg jetstream.Msg) (context.Context, func(*phase, *outcome) (context.Context, func())) {
	start := time.Now()
	ctx = tracing.Extract(ctx, msg.Headers())
	return ctx, func(p *phase, o *outcome) (context.Context, func()) {
		if !tracing.Enabled() {
			return w.untraced(ctx, msg, p, o)
		}
		fetchedAt := time.Now()
		name := "job"
		if _, ok := w.qcfg.JobIDOfSubject("decisions", msg.Subject()); ok {
			name = "decision"
		} else if _, ok := w.qcfg.JobIDOfSubject("control", msg.Subject()); ok {
			name = "control"
		}
		if !trace.SpanContextFromContext(ctx).IsValid() && p.run != nil {
			ctx = tracing.FromTraceParent(ctx, p.run.Record.TraceParent)
		}
		ctx, span := tracing.Start(ctx, name, trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attribute.String("jetpilot.job_id", p.job.ID), attribute.Int("jetpilot.attempt", p.attempt),
				attribute.String("messaging.destination.name", msg.Subject())))
		_, fs := tracing.Start(ctx, "fetch", trace.WithTimestamp(start))
		fs.End(trace.WithTimestamp(fetchedAt))
		p.log = tracing.Logger(ctx, p.log)
		if p.run != nil && p.run.Record.TraceParent == "" && name == "job" {
			// Recorded with the run's first transition: later phases join
			// this trace.
			p.run.Record.TraceParent = tracing.TraceParent(ctx)
		}
		if o == nil && name == "job" && p.run != nil && p.run.Stored != queue.RunRunning && p.run.Stored != queue.RunStarting {
			p.log.Info("job started", "profile", p.job.ProfileOrDefault(), "model", p.job.Model, "timeout", p.run.Record.Deadline.Sub(p.start).Round(time.Second).String())
		}
		return ctx, func() {
			if o != nil && o.kind == outReject {
				span.SetAttributes(attribute.String("jetpilot.outcome", "rejected"))
			}
			span.End()
		}
	}
}

// untraced is traceMessage's fetched with no tracer installed: no spans,
// but an incoming trace context still reaches the log lines, the run record
// and (through ctx) the messages the phase publishes.
func (w *Worker) untraced(ctx context.Context, msg jetstream.Msg, p *phase, o *outcome) (context.Context, func()) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		p.log = tracing.Logger(ctx, p.log)
	} else if p.run != nil && p.run.Record.TraceParent != "" {
		ctx = tracing.FromTraceParent(ctx, p.run.Record.TraceParent)
		p.log = tracing.Logger(ctx, p.log)
	}
	_, isDecision := w.qcfg.JobIDOfSubject("decisions", msg.Subject())
	_, isControl := w.qcfg.JobIDOfSubject("control", msg.Subject())
	isJob := !isDecision && !isControl
	if isJob && p.run != nil && p.run.Record.TraceParent == "" && trace.SpanContextFromContext(ctx).IsValid() {
		p.run.Record.TraceParent = tracing.TraceParent(ctx)
	}
	if o == nil && isJob && p.run != nil && p.run.Stored != queue.RunRunning && p.run.Stored != queue.RunStarting {
		p.log.Info("job started", "profile", p.job.ProfileOrDefault(), "model", p.job.Model, "timeout", p.run.Record.Deadline.Sub(p.start).Round(time.Second).String())
	}
	return ctx, func() {}
}

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
