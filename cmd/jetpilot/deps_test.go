package main_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestShipsNoTestCode: the jetpilot binary links no test support and no
// benchmark harness (those live in packages of their own for that reason:
// agentsimtest, internal/testsupport, internal/testnats, bench).
func TestShipsNoTestCode(t *testing.T) {
	t.Parallel()
	// The toolchain that builds this test has its go command.
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	const mod = "github.com/jetpilot-dev/jetpilot/"
	forbidden := map[string]bool{
		"testing":                           true,
		"net/http/httptest":                 true,
		"github.com/stretchr/testify":       true,
		mod + "bench":                       true,
		mod + "internal/testnats":           true,
		mod + "internal/testsupport":        true,
		mod + "spawn/agentsim/agentsimtest": true,
	}
	for _, pkg := range strings.Fields(string(out)) {
		for f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f+"/") {
				t.Errorf("jetpilot links %s", pkg)
			}
		}
	}
}
