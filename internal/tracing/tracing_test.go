package tracing_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
)

const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestHeadersCarryTheTraceContext(t *testing.T) {
	for _, key := range []string{"traceparent", "Traceparent", "TRACEPARENT"} {
		ctx := tracing.Extract(context.Background(), nats.Header{key: {tp}})
		sc := trace.SpanContextFromContext(ctx)
		require.True(t, sc.IsValid(), key)
		assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", sc.TraceID().String())
		assert.Equal(t, tp, tracing.TraceParent(ctx))
		assert.Equal(t, tp, tracing.Header(ctx).Get("traceparent"), "written in lower case")
	}
	assert.Nil(t, tracing.Header(context.Background()), "no trace, no header")
	assert.Equal(t, "", tracing.TraceParent(context.Background()))
	bad := tracing.Extract(context.Background(), nats.Header{"traceparent": {"00-zz-00-01"}})
	assert.False(t, trace.SpanContextFromContext(bad).IsValid(), "a malformed traceparent is ignored")
}

func TestSetupIsOffByDefault(t *testing.T) {
	prev := otel.GetTracerProvider()
	for _, env := range []string{"", "none"} {
		t.Setenv("OTEL_TRACES_EXPORTER", env)
		stop, err := tracing.Setup(context.Background())
		require.NoError(t, err)
		require.NoError(t, stop(context.Background()))
		assert.Equal(t, prev, otel.GetTracerProvider(), "OTEL_TRACES_EXPORTER=%q installs nothing", env)
	}
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_SDK_DISABLED", "true")
	_, err := tracing.Setup(context.Background())
	require.NoError(t, err)
	assert.Equal(t, prev, otel.GetTracerProvider(), "OTEL_SDK_DISABLED wins")
}

func TestSetupRefusesWhatItCannotDo(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	_, err := tracing.Setup(context.Background())
	assert.ErrorContains(t, err, `OTEL_TRACES_EXPORTER "zipkin" is not supported`)
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	_, err = tracing.Setup(context.Background())
	assert.ErrorContains(t, err, `"http/json" is not supported`)
}

func TestSetupInstallsAnExporter(t *testing.T) {
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1") // nothing listens: spans are dropped
	stop, err := tracing.Setup(context.Background())
	require.NoError(t, err)
	assert.NotEqual(t, prev, otel.GetTracerProvider())
	ctx, span := tracing.Start(context.Background(), "x")
	assert.True(t, span.SpanContext().IsSampled(), "parentbased_always_on")
	assert.Contains(t, tracing.TraceParent(ctx), span.SpanContext().TraceID().String())
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 1)
	defer cancel()
	_ = stop(ctx) // the export fails: nothing listens
}

// TestEnabledFollowsTheInstalledProvider: spans are recorded exactly when a
// program installed a provider, whatever it was installed before.
func TestEnabledFollowsTheInstalledProvider(t *testing.T) {
	require.False(t, tracing.Enabled(), "otel's own global provider: off")
	prev := otel.GetTracerProvider()
	provider := sdktrace.NewTracerProvider()
	otel.SetTracerProvider(provider)
	t.Cleanup(func() {
		otel.SetTracerProvider(prev)
		_ = provider.Shutdown(context.Background())
	})
	require.True(t, tracing.Enabled())
	_, span := tracing.Start(context.Background(), "x")
	assert.True(t, span.SpanContext().IsValid(), "a real span once a provider is installed")
	span.End()
}
