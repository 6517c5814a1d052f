package main

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
)

// startTracing installs the tracer provider the OTEL_* variables ask for
// (none unless OTEL_TRACES_EXPORTER is set; see tracing.Setup) and returns
// what flushes it at exit, within 5 s. Exporter errors are logged.
func startTracing(ctx context.Context, log *slog.Logger) (stop func(), err error) {
	shutdown, err := tracing.Setup(ctx)
	if err != nil {
		return nil, usageError("tracing: %v", err)
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("tracing", "err", err) }))
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			log.Warn("flush traces", "err", err)
		}
	}, nil
}
