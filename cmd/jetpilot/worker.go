package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// workerFlags configure a worker; `worker` and `dev` share them.
type workerFlags struct {
	agentURL        string
	agentTokenFile  string
	agentTLSCA      string
	agentTLSCert    string
	agentTLSKey     string
	name            string
	concurrency     int
	profiles        []string
	allowedTools    []string
	maxTimeout      time.Duration
	maxDeliver      int
	startBudget     time.Duration
	ackWait         time.Duration
	shutdownGrace   time.Duration
	shutdownMode    string
	approvalTimeout time.Duration
	// fallback is the policy while none is stored, when the flags name
	// none (dev's); nil: the built-in one.
	fallback    *policy.Policy
	onExpiry    string
	metricsAddr string
	// Runner tuning, for tests and operators chasing a slow server; not in
	// the README: the defaults suit the real agent server.
	livenessInterval time.Duration
	cancelGrace      time.Duration
}

func (f *workerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.agentURL, "agent-url", "http://127.0.0.1:4096", "agent server base URL")
	fs.StringVar(&f.agentTokenFile, "agent-token-file", "", "file holding the agent server's bearer token, re-read when the server refuses it or the file changes (or env JETPILOT_AGENT_TOKEN)")
	fs.StringVar(&f.agentTLSCA, "agent-tlsca", "", "CA certificate file the agent server's TLS certificate must chain to (https --agent-url)")
	fs.StringVar(&f.agentTLSCert, "agent-tlscert", "", "TLS client certificate file for the agent server")
	fs.StringVar(&f.agentTLSKey, "agent-tlskey", "", "TLS client key file for the agent server")
	fs.StringVar(&f.name, "name", "", "worker name in results and logs (default <hostname>-<pid>)")
	fs.IntVar(&f.concurrency, "concurrency", 8, "jobs run at once")
	fs.StringSliceVar(&f.profiles, "profiles", nil, "only take jobs of these profiles (default: all)")
	fs.StringSliceVar(&f.allowedTools, "allowed-tools", nil, "while no policy is stored: only these tools run, every other call is refused (default: read-only tools run, others wait for a human)")
	fs.DurationVar(&f.maxTimeout, "max-timeout", 0, "while no policy is stored: cap on a job's timeout, and the timeout of jobs that set none (default 1h)")
	fs.IntVar(&f.maxDeliver, "max-deliver", 5, "deliveries before a job failing for a reason other than the agent server is failed and dead-lettered")
	fs.DurationVar(&f.startBudget, "start-budget", worker.DefaultStartBudget, "how long a job whose run cannot start (agent server down or refusing the token) is retried, from its first failed start")
	fs.DurationVar(&f.ackWait, "ack-wait", 30*time.Second, "JetStream AckWait: how fast a dead worker's job comes back")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", 30*time.Second, "how long running jobs may go on after SIGTERM")
	fs.StringVar(&f.shutdownMode, "shutdown-mode", string(worker.ShutdownHandoff), "after the grace period: handoff (leave runs going, another worker re-attaches) or cancel")
	fs.DurationVar(&f.approvalTimeout, "approval-timeout", time.Hour, "how long a paused run waits for a decision")
	fs.StringVar(&f.onExpiry, "on-approval-expiry", string(worker.ExpireReject), "when an approval expires: reject the pending calls, or cancel the run")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9090)")
	fs.DurationVar(&f.livenessInterval, "liveness-interval", 0, "ask the agent server whether a run is alive after it sent no event for this long: a run that dies without an event ends run_lost within about this bound (default 20s)")
	fs.DurationVar(&f.cancelGrace, "cancel-grace", 0, "how long a cancelled run is followed for the agent server to confirm its end before the job is reported cancelled anyway, with a warning (default 30s)")
}

// agentClient connects to the agent server with the token from
// --agent-token-file (re-read whenever the server refuses it: the real server
// makes a new token on every start) or JETPILOT_AGENT_TOKEN. The token is
// never logged or printed. With --agent-tlsca/--agent-tlscert/--agent-tlskey
// the client uses that TLS configuration (and net/http for event streams);
// plain http to a host that is not loopback is logged as a warning, as the
// token then crosses the network in the clear.
func (f *workerFlags) agentClient(log *slog.Logger) (*spawn.Client, error) {
	opts := spawn.ClientOptions{BaseURL: f.agentURL, DirectEventStreams: true}
	u, err := url.Parse(strings.TrimSpace(f.agentURL))
	if err != nil {
		return nil, usageError("--agent-url does not parse")
	}
	tlsCfg, err := f.agentTLS()
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		if u.Scheme != "https" {
			return nil, usageError("--agent-tlsca, --agent-tlscert and --agent-tlskey need an https --agent-url")
		}
		opts.TLSConfig = tlsCfg
	}
	if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
		log.Warn("the agent server is reached over plain http on a host that is not loopback: its bearer token and every prompt cross the network unencrypted; use an https --agent-url",
			"agent_host", u.Host)
	}
	if f.agentTokenFile != "" {
		opts.TokenFile = f.agentTokenFile
	} else {
		opts.Token = strings.TrimSpace(os.Getenv("JETPILOT_AGENT_TOKEN"))
	}
	c, err := spawn.NewClient(opts)
	if err != nil {
		return nil, fmt.Errorf("agent client: %w", err)
	}
	return c, nil
}

// agentTLS builds the agent client's TLS configuration from the
// --agent-tls* flags; nil when none is given.
func (f *workerFlags) agentTLS() (*tls.Config, error) {
	if f.agentTLSCA == "" && f.agentTLSCert == "" && f.agentTLSKey == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.agentTLSCA != "" {
		pem, err := os.ReadFile(f.agentTLSCA)
		if err != nil {
			return nil, fmt.Errorf("read --agent-tlsca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageError("--agent-tlsca %s: no PEM certificate in it", f.agentTLSCA)
		}
		cfg.RootCAs = pool
	}
	if (f.agentTLSCert == "") != (f.agentTLSKey == "") {
		return nil, usageError("give --agent-tlscert and --agent-tlskey together")
	}
	if f.agentTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(f.agentTLSCert, f.agentTLSKey)
		if err != nil {
			return nil, fmt.Errorf("load --agent-tlscert/--agent-tlskey: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// loopbackHost reports whether host is localhost or a loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func newWorkerCmd(g *globalFlags) *cobra.Command {
	f := &workerFlags{}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Pull jobs from JetStream and run them on the agent server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withConn(cmd, g, "jetpilot worker", func(ctx context.Context, log *slog.Logger, nc *nats.Conn, js jetstream.JetStream) error {
				return runWorker(ctx, g, f, nc, js, log)
			})
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// runWorker sets up the streams, the agent client and the ops endpoint, and
// runs a worker until ctx is done.
func runWorker(ctx context.Context, g *globalFlags, f *workerFlags, nc *nats.Conn, js jetstream.JetStream, log *slog.Logger) error {
	stopTracing, err := startTracing(ctx, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	qcfg := g.queueConfig()
	qcfg.AckWait = f.ackWait
	if err := setupOrCheck(ctx, js, qcfg, g.perms, log); err != nil {
		return err
	}
	if err := checkPublish(ctx, js, qcfg, g.perms); err != nil {
		return err
	}
	client, err := f.agentClient(log)
	if err != nil {
		return err
	}
	policies, err := queue.NewPolicyStore(ctx, js, qcfg)
	if err != nil {
		return g.perms.explain(fmt.Errorf("open the policy bucket (run jetpilot setup): %w", err))
	}
	metrics := worker.NewMetrics()
	w, err := worker.New(ctx, js, qcfg, spawn.NewRunner(client, spawn.RunnerOptions{
		Worker: f.name, Logger: log, LivenessInterval: f.livenessInterval, CancelGrace: f.cancelGrace,
	}), worker.Options{
		Name:             f.name,
		Concurrency:      f.concurrency,
		Profiles:         f.profiles,
		AllowedTools:     f.allowedTools,
		MaxTimeout:       f.maxTimeout,
		MaxDeliver:       f.maxDeliver,
		StartBudget:      f.startBudget,
		ShutdownGrace:    f.shutdownGrace,
		ShutdownMode:     worker.ShutdownMode(f.shutdownMode),
		ApprovalTimeout:  f.approvalTimeout,
		Policies:         worker.StoredPolicies(policies),
		Fallback:         f.fallbackPolicy(),
		OnApprovalExpiry: worker.ExpiryAction(f.onExpiry),
		Logger:           log,
		Metrics:          metrics,
	})
	if err != nil {
		return usageError("%v", err)
	}
	if f.metricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		if err := metrics.Register(reg); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
		stop, err := serveOps(ctx, f.metricsAddr, worker.OpsHandler(reg,
			worker.ReadyCheck{Name: "nats", Check: func(context.Context) error {
				if !nc.IsConnected() {
					return errors.New("not connected")
				}
				return nil
			}},
			worker.ReadyCheck{Name: "agent_server", Check: func(context.Context) error {
				return w.AgentReady()
			}},
			worker.ReadyCheck{Name: "policy", Check: func(context.Context) error {
				return w.PolicyReady()
			}},
		), log)
		if err != nil {
			return err
		}
		defer stop()
	}
	log.Info("worker connected", "nats", redactURL(nc.ConnectedUrl()), "agent_url", f.agentURL, "name", w.Name())
	if err := w.Run(ctx); err != nil {
		return g.perms.explain(err)
	}
	return nil
}

// serveOps serves h on addr until the returned stop is called.
func serveOps(ctx context.Context, addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("ops server", "err", err)
		}
	}()
	log.Info("serving metrics and health", "addr", ln.Addr().String())
	return func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		<-done
	}, nil
}

// fallbackPolicy is the policy while none is stored: dev's when set, else
// nil (the worker builds the one its flags stand for, or the built-in one).
func (f *workerFlags) fallbackPolicy() *policy.Policy { return f.fallback }
