package spawn

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/policy"
)

// allowOnly is the policy of a worker started with --allowed-tools tools.
func allowOnly(t *testing.T, tools ...string) func() *policy.Policy {
	t.Helper()
	p, err := policy.FromFlags(tools, 0)
	require.NoError(t, err)
	return func() *policy.Policy { return p }
}

// humanAsks is the built-in policy with unsigned decisions: read-only
// tools run, every other call waits for a human (whom these tests play).
func humanAsks() *policy.Policy { return humanAsksPolicy }

var humanAsksPolicy = func() *policy.Policy {
	p, err := policy.Parse([]byte(`{"version":1,"decisions":"unsigned","tools":{"default":"approve",
		"rules":[{"name":"read-only","match":{"tools":["view","search_docs"]},"action":"allow"}]}}`))
	if err != nil {
		panic(err)
	}
	return p
}()
