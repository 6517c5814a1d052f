package agentsimtest_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

func TestNew(t *testing.T) {
	t.Parallel()
	s, url := agentsimtest.New(t, agentsim.Options{})
	require.NotNil(t, s)
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+$`, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/health", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}
