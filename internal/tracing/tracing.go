// Package tracing is jetpilot's OpenTelemetry glue: spans through the
// global tracer provider (a no-op until Setup installs one), and W3C trace
// context carried in NATS message headers. Propagation works with tracing
// off too: a job's traceparent reaches its results and events whether or
// not this process exports spans, so a producer's trace stays whole.
package tracing

import (
	"context"
	"log/slog"
	"reflect"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Name is the instrumentation scope of every jetpilot span.
const Name = "github.com/jetpilot-dev/jetpilot"

// propagator is W3C Trace Context, whatever OTEL_PROPAGATORS says: the
// traceparent header is the interface (DESIGN.md), not a setting.
var propagator = propagation.TraceContext{}

// Start starts a span named name under ctx's span. The tracer is looked up
// on each call, so a provider installed later (Setup, or a test's) is used.
// With none installed it returns ctx and the span ctx already carries (a
// no-op span with the incoming trace context, which is what otel's global
// no-op tracer would return, without allocating one per call: that was
// 1.4 % of the queue path's CPU).
func Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !Enabled() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return otel.Tracer(Name).Start(ctx, name, opts...)
}

// globalPkg is the package of otel's own global provider, the one in place
// until a program installs one (otel.SetTracerProvider). Compared by
// package rather than by the value seen at init, which would be a
// program's own provider if it installed one in an earlier init.
const globalPkg = "go.opentelemetry.io/otel/internal/global"

// Enabled reports whether a tracer provider was installed, so spans are
// recorded: callers skip building attributes when it is false.
func Enabled() bool {
	t := reflect.TypeOf(otel.GetTracerProvider())
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath() != globalPkg
}

// Attrs is trace.WithAttributes, to keep call sites short.
func Attrs(kv ...attribute.KeyValue) trace.SpanStartEventOption { return trace.WithAttributes(kv...) }

// Count is one integer attribute, as a span start option.
func Count(key string, n int) trace.SpanStartEventOption {
	return trace.WithAttributes(attribute.Int(key, n))
}

// End ends span, marking it failed with err when err is not nil.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Extract returns ctx with the remote span context of the message headers
// h (traceparent, tracestate), or ctx itself when they carry none.
func Extract(ctx context.Context, h nats.Header) context.Context {
	return propagator.Extract(ctx, carrier(h))
}

// FromTraceParent is Extract for a traceparent kept as a string (a run
// record's).
func FromTraceParent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return Extract(ctx, nats.Header{"traceparent": {traceparent}})
}

// TraceParent is ctx's span context as a traceparent header value; "" when
// ctx has none.
func TraceParent(ctx context.Context) string {
	h := nats.Header{}
	propagator.Inject(ctx, carrier(h))
	return h.Get("traceparent")
}

// Header is a fresh message header holding ctx's trace context; nil when
// ctx has none, so a message without a trace carries no header at all.
func Header(ctx context.Context) nats.Header {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	h := nats.Header{}
	propagator.Inject(ctx, carrier(h))
	return h
}

// Logger is log with the trace_id of ctx's span, when it has one.
func Logger(ctx context.Context, log *slog.Logger) *slog.Logger {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return log.With("trace_id", sc.TraceID().String())
	}
	return log
}

// carrier reads and writes W3C headers in a nats.Header, whose keys are
// case-sensitive while HTTP's (and W3C's) are not: traceparent is written
// in lower case and read in any case.
type carrier nats.Header

func (c carrier) Get(key string) string {
	if v := nats.Header(c).Get(key); v != "" {
		return v
	}
	for k, v := range c {
		if strings.EqualFold(k, key) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func (c carrier) Set(key, value string) { nats.Header(c).Set(strings.ToLower(key), value) }

func (c carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
