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
