// Package deploy_test checks the deploy recipes against each other and the
// binary: what can be checked without a cluster, a container runtime or
// systemd as init. The manifests parse and agree (ports, paths, labels,
// ConfigMap names), every flag they pass exists, the policy is valid, the
// Dockerfile builds with go.mod's Go, and the agent-token wrapper hands
// the token over and keeps it out of the output.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/jetpilot-dev/jetpilot/policy"
)

type obj = map[string]any

// at walks a parsed YAML document: keys for maps, indexes for lists.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			require.True(t, ok, "%v: not a map at %q", path, k)
			v, ok = m[k]
			require.True(t, ok, "%v: no key %q", path, k)
		case int:
			l, ok := v.([]any)
			require.True(t, ok && k < len(l), "%v: no index %d", path, k)
			v = l[k]
		}
	}
	return v
}

func str(t *testing.T, v any, path ...any) string {
	t.Helper()
	s, ok := at(t, v, path...).(string)
	require.True(t, ok, "%v is not a string", path)
	return s
}

func list(t *testing.T, v any, path ...any) []any {
	t.Helper()
	l, ok := at(t, v, path...).([]any)
	require.True(t, ok, "%v is not a list", path)
	return l
}

func readYAML(t *testing.T, file string) obj {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var doc obj
	require.NoError(t, yaml.Unmarshal(data, &doc), file)
	return doc
}

// named is the element of l (a list of maps) whose "name" is name.
func named(t *testing.T, l []any, name string) obj {
	t.Helper()
	for _, e := range l {
		if m, ok := e.(obj); ok && m["name"] == name {
			return m
		}
	}
	t.Fatalf("no %q in %v", name, l)
	return nil
}

// flagValue is the value of --name=value in args.
func flagValue(t *testing.T, args []any, name string) string {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a.(string), "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("no --%s= in %v", name, args)
	return ""
}

func envValue(t *testing.T, env []any, name string) string {
	t.Helper()
	return str(t, named(t, env, name), "value")
}

func mountPath(t *testing.T, c obj, volume string) (string, bool) {
	t.Helper()
	m := named(t, list(t, c, "volumeMounts"), volume)
	ro, _ := m["readOnly"].(bool)
	return str(t, m, "mountPath"), ro
}

func TestKubernetesExample(t *testing.T) {
	kust := readYAML(t, "kustomization.yaml")
	docs := map[string]obj{}
	for _, r := range list(t, kust, "resources") {
		doc := readYAML(t, r.(string))
		docs[str(t, doc, "kind")] = doc
	}
	generated := map[string]string{} // ConfigMap name -> its one file
	for _, g := range list(t, kust, "configMapGenerator") {
		files := list(t, g, "files")
		require.Len(t, files, 1)
		_, err := os.Stat(files[0].(string))
		require.NoError(t, err, "generator file")
		generated[str(t, g, "name")] = files[0].(string)
	}
	for _, k := range []string{"Namespace", "Deployment", "PodDisruptionBudget", "Job"} {
		require.Contains(t, docs, k)
	}
	assert.Equal(t, str(t, docs["Namespace"], "metadata", "name"), str(t, kust, "namespace"))

	dep := docs["Deployment"]
	pod := at(t, dep, "spec", "template", "spec")
	worker := named(t, list(t, pod, "containers"), "worker")
	sidecar := named(t, list(t, pod, "initContainers"), "agent-server")
	args := list(t, worker, "args")
	assert.Equal(t, "worker", args[0])

	// Readiness on /readyz, on the port --metrics-addr serves.
	assert.Equal(t, "/readyz", str(t, worker, "readinessProbe", "httpGet", "path"))
	assert.Equal(t, "/healthz", str(t, worker, "livenessProbe", "httpGet", "path"))
	port := named(t, list(t, worker, "ports"), str(t, worker, "readinessProbe", "httpGet", "port"))
	assert.Equal(t, fmt.Sprintf("0.0.0.0:%v", at(t, port, "containerPort")), flagValue(t, args, "metrics-addr"))
	assert.Equal(t, fmt.Sprint(at(t, port, "containerPort")), str(t, dep, "spec", "template", "metadata", "annotations", "prometheus.io/port"))

	// The sidecar: native (restartPolicy Always), on the loopback the
	// worker dials, writing the token file the worker reads, ready only
	// once it has.
	assert.Equal(t, "Always", str(t, sidecar, "restartPolicy"))
	sideEnv := list(t, sidecar, "env")
	assert.Equal(t, "http://"+envValue(t, sideEnv, "AGENT_BIND"), flagValue(t, args, "agent-url"))
	assert.True(t, strings.HasPrefix(envValue(t, sideEnv, "AGENT_BIND"), "127.0.0.1:"), "loopback only")
	tokenFile := envValue(t, sideEnv, "TOKEN_FILE")
	assert.Equal(t, tokenFile, flagValue(t, args, "agent-token-file"))
	assert.Equal(t, []any{"test", "-s", tokenFile}, list(t, sidecar, "startupProbe", "exec", "command"))
	sideDir, sideRO := mountPath(t, sidecar, "agent-token")
	workerDir, workerRO := mountPath(t, worker, "agent-token")
	assert.Equal(t, filepath.Dir(tokenFile), sideDir)
	assert.Equal(t, sideDir, workerDir)
	assert.False(t, sideRO)
	assert.True(t, workerRO, "the worker only reads the token")
	tokenVol := named(t, list(t, pod, "volumes"), "agent-token")
	assert.Equal(t, "Memory", str(t, tokenVol, "emptyDir", "medium"), "the token never touches a disk")
	// The wrapper script comes from its ConfigMap, at the path the command runs.
	wrapDir, _ := mountPath(t, sidecar, "agent-wrapper")
	wrapCM := str(t, named(t, list(t, pod, "volumes"), "agent-wrapper"), "configMap", "name")
	require.Contains(t, generated, wrapCM)
	assert.Equal(t, wrapDir+"/"+filepath.Base(generated[wrapCM]), list(t, sidecar, "command")[1])

	// NATS credentials: the mounted secret holds the file JETPILOT_CREDS names.
	credsDir, _ := mountPath(t, worker, "nats-creds")
	assert.Equal(t, credsDir, filepath.Dir(envValue(t, list(t, worker, "env"), "JETPILOT_CREDS")))

	// Time to shut down gracefully.
	grace, err := time.ParseDuration(flagValue(t, args, "shutdown-grace"))
	require.NoError(t, err)
	assert.Greater(t, float64(at(t, pod, "terminationGracePeriodSeconds").(float64)), grace.Seconds())
	for _, c := range []obj{worker, sidecar} {
		assert.Equal(t, false, at(t, c, "securityContext", "allowPrivilegeEscalation"))
	}
	assert.Equal(t, true, at(t, worker, "securityContext", "readOnlyRootFilesystem"))
	assert.Equal(t, true, at(t, pod, "securityContext", "runAsNonRoot"))

	// The PDB covers exactly the workers.
	sel := at(t, dep, "spec", "selector", "matchLabels").(obj)
	assert.Equal(t, sel, at(t, docs["PodDisruptionBudget"], "spec", "selector", "matchLabels"))
	labels := at(t, dep, "spec", "template", "metadata", "labels").(obj)
	for k, v := range sel {
		assert.Equal(t, v, labels[k], "the selector matches the pods")
	}

	// The policy Job stores the generated ConfigMap's file.
	job := at(t, docs["Job"], "spec", "template", "spec")
	set := named(t, list(t, job, "containers"), "policy-set")
	polDir, _ := mountPath(t, set, "policy")
	polCM := str(t, named(t, list(t, job, "volumes"), "policy"), "configMap", "name")
	require.Contains(t, generated, polCM)
	assert.Equal(t, []any{"policy", "set", polDir + "/" + filepath.Base(generated[polCM])}, list(t, set, "args"))
	assert.Equal(t, "setup", list(t, named(t, list(t, job, "initContainers"), "setup"), "args")[0])
}

func TestPolicyIsValid(t *testing.T) {
	data, err := os.ReadFile("policy.yaml")
	require.NoError(t, err)
	p, err := policy.Parse(data)
	require.NoError(t, err)
	assert.Equal(t, 200, p.MaxPaused())
}

// jetpilotBin is the binary built as the Dockerfile builds it (static,
// CGO off), once for the tests that run it.
var jetpilotBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetpilot-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	jetpilotBin = filepath.Join(dir, "jetpilot")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", jetpilotBin, "../cmd/jetpilot")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// TestRecipesUseRealFlags runs `jetpilot CMD --help` for every command the
// recipes run and checks that each flag they pass, and each JETPILOT_<FLAG>
// they set, is one of its flags.
func TestRecipesUseRealFlags(t *testing.T) {
	bin := jetpilotBin
	help := map[string]string{}
	flagsOf := func(cmd string) string {
		if h, ok := help[cmd]; !ok {
			out, err := exec.Command(bin, append(strings.Fields(cmd), "--help")...).CombinedOutput()
			require.NoError(t, err, "%s --help: %s", cmd, out)
			help[cmd] = string(out)
		} else {
			return h
		}
		return help[cmd]
	}
	check := func(where, cmd string, flags []string) {
		t.Helper()
		h := flagsOf(cmd)
		for _, f := range flags {
			assert.Regexp(t, regexp.MustCompile(`(?m)^\s+(-\w, )?--`+regexp.QuoteMeta(f)+`\b`), h, "%s: jetpilot %s has no --%s", where, cmd, f)
		}
	}
	flagRE := regexp.MustCompile(`--([a-z][a-z0-9-]*)`)
	envRE := regexp.MustCompile(`JETPILOT_([A-Z0-9_]+)`)
	flagsIn := func(s string) (out []string) {
		for _, m := range flagRE.FindAllStringSubmatch(s, -1) {
			out = append(out, m[1])
		}
		return out
	}
	envFlags := func(s string) (out []string) {
		for _, m := range envRE.FindAllStringSubmatch(s, -1) {
			out = append(out, strings.ReplaceAll(strings.ToLower(m[1]), "_", "-"))
		}
		return out
	}

	// Kubernetes: each container's args and env.
	for _, file := range []string{"kubernetes/worker.yaml", "kubernetes/policy-job.yaml"} {
		doc := readYAML(t, file)
		pod := at(t, doc, "spec", "template", "spec").(obj)
		var containers []any
		for _, k := range []string{"initContainers", "containers"} {
			if l, ok := pod[k].([]any); ok {
				containers = append(containers, l...)
			}
		}
		for _, c := range containers {
			c := c.(obj)
			if !strings.Contains(c["image"].(string), "jetpilot") {
				continue
			}
			var words []string
			for _, a := range c["args"].([]any) {
				if !strings.HasPrefix(a.(string), "-") && !strings.Contains(a.(string), "/") {
					words = append(words, a.(string))
				}
			}
			cmd := strings.Join(words, " ")
			var args, env strings.Builder
			for _, a := range c["args"].([]any) {
				args.WriteString(" " + a.(string))
			}
			for _, e := range c["env"].([]any) {
				env.WriteString(" " + e.(obj)["name"].(string))
			}
			check(file+" "+c["name"].(string), cmd, append(flagsIn(args.String()), envFlags(env.String())...))
		}
	}
	// systemd: ExecStart of the worker.
	unit, err := os.ReadFile("systemd/jetpilot-worker.service")
	require.NoError(t, err)
	execStart := regexp.MustCompile(`(?s)\nExecStart=/usr/local/bin/jetpilot (\w+)(.*?[^\\])\n`).FindSubmatch(unit)
	require.NotNil(t, execStart, "the worker unit's ExecStart")
	check("jetpilot-worker.service", string(execStart[1]), flagsIn(string(execStart[2])))
	// The README's docker run line.
	docker, err := os.ReadFile("Dockerfile")
	require.NoError(t, err)
	run := regexp.MustCompile(`docker run --rm jetpilot (\w+)(.*)`).FindSubmatch(docker)
	require.NotNil(t, run)
	check("Dockerfile", string(run[1]), flagsIn(string(run[2])))
}

func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("Dockerfile")
	require.NoError(t, err)
	mod, err := os.ReadFile("../go.mod")
	require.NoError(t, err)
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	require.NotNil(t, goLine)
	from := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllSubmatch(df, -1)
	require.Len(t, from, 2, "a build stage and the image")
	assert.Equal(t, "golang:"+string(goLine[1])+"-bookworm", string(from[0][1]), "the Go of go.mod")
	assert.Equal(t, "gcr.io/distroless/static-debian12:nonroot", string(from[1][1]))
	assert.Contains(t, string(df), "CGO_ENABLED=0")
	user := regexp.MustCompile(`(?m)^USER (\d+):(\d+)$`).FindSubmatch(df)
	require.NotNil(t, user, "a numeric USER, so runAsNonRoot can check it")
	assert.NotEqual(t, "0", string(user[1]))
	assert.Contains(t, string(df), `ENTRYPOINT ["/jetpilot"]`)
}

// TestStaticBinary: the binary built as the Dockerfile builds it is
// static (distroless/static has no libc).
func TestStaticBinary(t *testing.T) {
	f, err := os.ReadFile(jetpilotBin)
	require.NoError(t, err)
	// A dynamically linked ELF names its loader (PT_INTERP) and libc.
	assert.NotContains(t, string(f[:min(len(f), 64<<10)]), "/lib64/ld-linux", "no dynamic loader")
	assert.False(t, bytes.Contains(f, []byte("libc.so")), "no libc")
}

// fakeStakpak prints what `stakpak up --foreground --show-token` prints,
// records its arguments, and runs until it is sent SIGTERM.
const fakeStakpak = `#!/bin/bash
echo "$@" > "$ARGS_FILE"
echo "Autopilot running in foreground. Press Ctrl+C to stop."
echo
echo "  Server      http://127.0.0.1:4096"
echo "  Auth token  Bearer s3cr3t-token-value"
echo "  Gateway     no channels configured"
trap 'echo "stopped"; exit 0' TERM
while :; do sleep 0.05; done
`

func TestAgentTokenWrapper(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "stakpak")
	require.NoError(t, os.WriteFile(fake, []byte(fakeStakpak), 0o755))
	tokenFile := filepath.Join(dir, "token")
	argsFile := filepath.Join(dir, "args")
	require.NoError(t, os.WriteFile(tokenFile, []byte("stale"), 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/bash", "agent-token.sh", fake)
	cmd.Env = append(os.Environ(), "TOKEN_FILE="+tokenFile, "ARGS_FILE="+argsFile, "AGENT_BIND=127.0.0.1:4999")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var output []string
	// The wrapper announces the token file once it has written it.
	for !slices.ContainsFunc(output, func(l string) bool { return strings.Contains(l, "token is in") }) {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "the wrapper ended early: %v", output)
			output = append(output, l)
		case <-ctx.Done():
			t.Fatalf("no token written; output %v", output)
		}
	}
	tok, err := os.ReadFile(tokenFile)
	require.NoError(t, err)
	assert.Equal(t, "s3cr3t-token-value\n", string(tok))
	fi, err := os.Stat(tokenFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm(), "group-readable, no more")
	args, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	assert.Equal(t, "up --foreground --non-interactive --bind 127.0.0.1:4999 --show-token\n", string(args))

	// SIGTERM reaches the server, and the wrapper ends with it.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	for l := range lines {
		output = append(output, l)
	}
	require.NoError(t, cmd.Wait(), "output %v", output)
	all := strings.Join(output, "\n")
	assert.NotContains(t, all, "s3cr3t", "the token never reaches the output")
	assert.Contains(t, all, "Server      http://127.0.0.1:4096", "other lines pass through")
	assert.Contains(t, all, "stopped", "the server got SIGTERM")
}
