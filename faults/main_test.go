package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Binaries built once by TestMain.
var (
	natsBin string // the real nats-server
	jpBin   string // jetpilot
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetpilot-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: temp dir:", err)
		os.Exit(1)
	}
	natsBin = filepath.Join(dir, "nats-server")
	jpBin = filepath.Join(dir, "jetpilot")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, b := range []struct{ out, pkg string }{
		{natsBin, "github.com/nats-io/nats-server/v2"},
		{jpBin, "github.com/jetpilot-dev/jetpilot/cmd/jetpilot"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// heavy reports whether the heavy loads were asked for (make faults).
func heavy() bool { return os.Getenv("JETPILOT_FAULTS") == "1" }

// load picks the job count for the mode.
func load(short, full int) int {
	if heavy() {
		return full
	}
	return short
}

// waitFor bounds every single wait; generous for -race on 2 cores.
const waitFor = 90 * time.Second

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proc is a child process whose output is captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error // Wait's error, set before done is closed
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output is everything the process wrote to stdout and stderr so far.
func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startProc starts bin with args; cleanup SIGKILLs it if still running and
// shows its output when the test failed.
func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	require.NoError(t, p.cmd.Start(), "start %s", name)
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			out := p.Output()
			if len(out) > 20000 {
				out = "..." + out[len(out)-20000:]
			}
			t.Logf("--- %s output:\n%s", name, out)
		}
	})
	return p
}

// kill SIGKILLs the process (if it still runs) and waits for it to exit.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(waitFor):
		t.Errorf("%s did not exit after SIGKILL", p.name)
	}
}

// exitCode waits for the process to exit and returns its exit code.
func (p *proc) exitCode(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %s; output:\n%s", p.name, within, p.Output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err)
	return 0
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// workerOpts are the flags of one jetpilot worker process.
type workerOpts struct {
	name     string
	natsURL  string
	agentURL string
	extra    []string // more flags
	env      []string
}

// startWorker runs `jetpilot worker` with short AckWait and grace so a
// killed worker's jobs come back fast, and waits until it pulls jobs.
func startWorker(t *testing.T, o workerOpts) *proc {
	t.Helper()
	args := []string{"worker", "--nats", o.natsURL, "--agent-url", o.agentURL, "--name", o.name,
		"--ack-wait", "2s", "--shutdown-grace", "1s"}
	args = append(args, o.extra...)
	p := startProc(t, "worker "+o.name, o.env, jpBin, args...)
	require.Eventually(t, func() bool {
		return strings.Contains(p.Output(), "worker started") || !p.running()
	}, waitFor, 20*time.Millisecond, "worker %s starts", o.name)
	require.True(t, p.running(), "worker %s exited at start:\n%s", o.name, p.Output())
	return p
}

// figures are one scenario's measured outcome, for RELIABILITY.md.
type figures struct {
	Scenario   string
	Load       string
	Faults     string
	Jobs       int
	Lost       int
	Duplicates int
	Hung       int // jobs with no final result within the scenario's bound
	MaxRuns    int // most agent runs started for one job
	MinRuns    int // fewest agent runs started for one job
	Reattached int // jobs finished by a later delivery
	Elapsed    time.Duration
	Command    string
}

// report logs the figures and, with JETPILOT_FAULTS_REPORT set, appends them
// to that file as a Markdown table row.
func report(t *testing.T, f figures) {
	t.Helper()
	mode := "short"
	if heavy() {
		mode = "heavy"
	}
	runs := strconv.Itoa(f.MaxRuns)
	if f.MinRuns != f.MaxRuns {
		runs = fmt.Sprintf("%d-%d", f.MinRuns, f.MaxRuns)
	}
	row := fmt.Sprintf("| %s | %s | %s | %s | %d | %d | %d | %s | %d | %s | `%s` |",
		f.Scenario, mode, f.Load, f.Faults, f.Lost, f.Duplicates, f.Hung, runs, f.Reattached,
		f.Elapsed.Round(100*time.Millisecond), f.Command)
	t.Log("FIGURES " + row)
	if path := os.Getenv("JETPILOT_FAULTS_REPORT"); path != "" {
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		require.NoError(t, err)
		defer fh.Close()
		_, err = fmt.Fprintln(fh, row)
		require.NoError(t, err)
	}
}

// ctxFor is a context bounded by waitFor, cancelled at cleanup.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
