package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/console"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// DefaultConsoleAddr is where `jetpilot console` and `jetpilot dev` serve
// the console.
const DefaultConsoleAddr = "127.0.0.1:8080"

func newConsoleCmd(g *globalFlags) *cobra.Command {
	var addr, usersFile, loginTokenFile string
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve the web console: jobs, approvals, dead letters, workers, policy",
		Long: `Serves the web console on --addr. Sign-in is by the users of --users-file
(bcrypt password hashes, roles viewer or approver; see "jetpilot console passwd")
and/or by the token in --login-token-file, which signs in as a viewer.
Approvers decide approvals (signed in their browser under decisions: signed)
and requeue dead letters; viewers only read. Serve it over HTTPS (a reverse
proxy) anywhere but on localhost: browsers sign only on secure pages.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if usersFile == "" && loginTokenFile == "" {
				return usageError("give --users-file or --login-token-file: the console needs a sign-in")
			}
			var auth console.Auth
			if usersFile != "" {
				u, err := console.LoadUsers(usersFile)
				if err != nil {
					return usageError("--users-file: %w", err)
				}
				auth.Users = u
			}
			if loginTokenFile != "" {
				tok, err := console.LoadToken(loginTokenFile)
				if err != nil {
					return usageError("--login-token-file: %w", err)
				}
				auth.Token = tok
			}
			log, closeLog, err := g.newLogger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer closeLog()
			nc, js, err := g.connect(ctx, "jetpilot console", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			url, wait, err := startConsole(ctx, js, g.queueConfig(), auth, addr, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "console: %s\n", url)
			return wait()
		},
	}
	cmd.Flags().StringVar(&addr, "addr", DefaultConsoleAddr, "address to serve the console on")
	cmd.Flags().StringVar(&usersFile, "users-file", "", "users file (YAML or JSON): name, password_hash (bcrypt), role (viewer|approver), approver")
	cmd.Flags().StringVar(&loginTokenFile, "login-token-file", "", "file holding a sign-in token (at least 16 characters); it signs in as a viewer")
	cmd.AddCommand(newConsolePasswdCmd())
	return cmd
}

func newConsolePasswdCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "passwd",
		Short: "Read a password on stdin and print its bcrypt hash for a users file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
			if err != nil && line == "" {
				return usageError("read the password from stdin: %w", err)
			}
			h, err := console.HashPassword(strings.TrimRight(line, "\r\n"))
			if err != nil {
				return usageError("%w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), h)
			return nil
		},
	}
}

// startConsole listens on addr and serves the console until ctx is done;
// wait blocks until it has stopped. The URL is the address listened on.
func startConsole(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, auth console.Auth, addr string, log *slog.Logger) (url string, wait func() error, err error) {
	srv, err := console.New(ctx, console.Config{JS: js, Queue: qcfg, Auth: auth, Logger: log.With("component", "console")})
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("console: listen on %s: %w", addr, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	return "http://" + ln.Addr().String(), func() error { return <-done }, nil
}

// devConsoleToken writes a new sign-in token for `jetpilot dev`'s console
// to dir/console-token (mode 0600) and returns it and the file's path; the
// token itself is never printed.
func devConsoleToken(dir string) (string, string, error) {
	tok, err := console.NewToken()
	if err != nil {
		return "", "", err
	}
	path, err := filepath.Abs(filepath.Join(dir, "console-token"))
	if err != nil {
		return "", "", fmt.Errorf("console token file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", "", fmt.Errorf("console token file: %w", err)
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("console token file: %w", err)
	}
	return tok, path, nil
}

// isAddrInUse reports a listen error for a port another program holds.
func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// startDevConsole serves `jetpilot dev`'s console: one sign-in token,
// written to dir/console-token, that signs in as an approver named "dev"
// (whichever approver a signing key is, under signed decisions). When
// fallback is set and addr is taken, a free port is used instead.
func startDevConsole(ctx context.Context, out io.Writer, js jetstream.JetStream, g *globalFlags, dir, addr string, fallback bool, log *slog.Logger) (wait func() error, err error) {
	tok, path, err := devConsoleToken(dir)
	if err != nil {
		return nil, err
	}
	auth := console.Auth{Token: tok, TokenUser: console.User{Name: "dev", Role: console.RoleApprover}}
	url, wait, err := startConsole(ctx, js, g.queueConfig(), auth, addr, log)
	if err != nil && fallback && isAddrInUse(err) {
		url, wait, err = startConsole(ctx, js, g.queueConfig(), auth, "127.0.0.1:0", log)
	}
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "console: %s (sign in with the token in %s)\n", url, path)
	return wait, nil
}
