package testsupport

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// killWait bounds the wait for a process to exit after SIGKILL (generous
// for -race on 2 cores).
const killWait = 90 * time.Second

// Build builds the main package pkg into out with `go build` (with -race
// when race is set), for a TestMain: it returns the build's output in the
// error.
func Build(out, pkg string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Proc is a child process whose stdout and stderr are captured together.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error // Wait's error, set before done is closed
}

// StartProc starts bin with args and the environment plus env. Cleanup
// SIGKILLs it if it still runs and logs (the tail of) its output when the
// test failed.
func StartProc(t testing.TB, name string, env []string, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, Cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p, p
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill(t)
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

func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output is everything the process wrote to stdout and stderr so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill SIGKILLs the process (if it still runs) and waits for it to exit.
// It reports a process that does not exit with t.Errorf, so it is safe
// from any goroutine.
func (p *Proc) Kill(t testing.TB) {
	t.Helper()
	if !p.Running() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(killWait):
		t.Errorf("%s did not exit after SIGKILL", p.Name)
	}
}

// ExitCode waits up to within for the process to exit and returns its exit
// code; a process that does not exit in time fails the test.
func (p *Proc) ExitCode(t testing.TB, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %s; output:\n%s", p.Name, within, p.Output())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("%s: %v", p.Name, p.err)
	}
	return 0
}
