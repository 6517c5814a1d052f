package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	slogmulti "github.com/samber/slog-multi"
)

// newLogger fans logs out to readable text on stderr and, with --log-json,
// JSON lines in a file for a log shipper (created mode 0600: logs name
// jobs, sessions and hosts). The returned closer closes the file.
func (g *globalFlags) newLogger(stderr io.Writer) (*slog.Logger, func() error, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, nil, usageError("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	handlers := []slog.Handler{slog.NewTextHandler(stderr, opts)}
	closer := func() error { return nil }
	if g.logJSON != "" {
		f, err := os.OpenFile(g.logJSON, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("open --log-json file: %w", err)
		}
		handlers = append(handlers, slog.NewJSONHandler(f, opts))
		closer = f.Close
	}
	return slog.New(slogmulti.Fanout(handlers...)), closer, nil
}
