package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Setup installs a tracer provider as the standard OTEL_* variables say,
// and returns what flushes and stops it. Tracing is off unless
// OTEL_TRACES_EXPORTER names an exporter (unlike the SDK's own default,
// otlp): a worker nobody configured sends nothing anywhere.
//
//   - OTEL_TRACES_EXPORTER: none (default), otlp, console; a comma list
//     sends to each. OTEL_SDK_DISABLED=true turns it off whatever it says.
//   - otlp: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL,
//     http/protobuf (default) or grpc; endpoint, headers, TLS, timeout and
//     compression from the OTEL_EXPORTER_OTLP_* variables, read by the
//     exporters themselves.
//   - OTEL_SERVICE_NAME (default jetpilot), OTEL_RESOURCE_ATTRIBUTES,
//     OTEL_TRACES_SAMPLER and _ARG (default parentbased_always_on),
//     OTEL_BSP_*: read by the SDK.
func Setup(ctx context.Context) (shutdown func(context.Context) error, err error) {
	off := func(context.Context) error { return nil }
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return off, nil
	}
	var exporters []sdktrace.SpanExporter
	for _, name := range strings.Split(os.Getenv("OTEL_TRACES_EXPORTER"), ",") {
		exp, err := exporter(ctx, strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		if exp != nil {
			exporters = append(exporters, exp)
		}
	}
	if len(exporters) == 0 {
		return off, nil
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "jetpilot")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	for _, exp := range exporters {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// exporter is the span exporter OTEL_TRACES_EXPORTER names; nil for none.
func exporter(ctx context.Context, name string) (sdktrace.SpanExporter, error) {
	switch strings.ToLower(name) {
	case "", "none":
		return nil, nil
	case "console":
		exp, err := stdouttrace.New()
		if err != nil {
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=console: %w", err)
		}
		return exp, nil
	case "otlp":
		protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if protocol == "" {
			protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		var exp sdktrace.SpanExporter
		var err error
		switch strings.TrimSpace(protocol) {
		case "", "http/protobuf":
			exp, err = otlptracehttp.New(ctx)
		case "grpc":
			exp, err = otlptracegrpc.New(ctx)
		default:
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q is not supported for traces: use http/protobuf or grpc", protocol)
		}
		if err != nil {
			return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=otlp (%s): %w", protocol, err)
		}
		return exp, nil
	}
	return nil, errors.New("OTEL_TRACES_EXPORTER " + fmt.Sprintf("%q", name) + " is not supported: use none, otlp or console")
}
