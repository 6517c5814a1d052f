package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}.WithDefaults()
	assert.Equal(t, "jetpilot", cfg.Prefix)
	assert.Equal(t, 1, cfg.Replicas)
	assert.Equal(t, jetstream.FileStorage, cfg.Storage)
	assert.Equal(t, 24*time.Hour, cfg.JobsDuplicateWindow)
	assert.Equal(t, 7*24*time.Hour, cfg.ResultsMaxAge)
	assert.Equal(t, 7*24*time.Hour, cfg.ApprovalsMaxAge)
	assert.Equal(t, time.Hour, cfg.EventsMaxAge)
	assert.Equal(t, 30*24*time.Hour, cfg.DeadMaxAge)
	assert.Equal(t, 400*24*time.Hour, cfg.AuditMaxAge)
	assert.Equal(t, int64(1<<30), cfg.AuditMaxBytes)
	assert.Equal(t, 30*time.Second, cfg.AckWait)
	assert.Equal(t, 5, cfg.MaxDeliver)
	assert.Equal(t, 1000, cfg.MaxAckPending)
	require.NoError(t, queue.Config{}.Validate())
}

func TestConfigNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		prefix, upper string
	}{
		{"", "JETPILOT"},
		{"jetpilot", "JETPILOT"},
		{"acme-ci_2", "ACME-CI_2"},
	} {
		cfg := queue.Config{Prefix: tc.prefix}
		p := cfg.WithDefaults().Prefix
		assert.Equal(t, p+".jobs.default", cfg.JobSubject("default"))
		assert.Equal(t, p+".jobs.>", cfg.JobsWildcard())
		assert.Equal(t, p+".results.build:42", cfg.ResultSubject("build:42"))
		assert.Equal(t, p+".approvals.j1", cfg.ApprovalSubject("j1"))
		assert.Equal(t, p+".decisions.j1", cfg.DecisionSubject("j1"))
		assert.Equal(t, p+".events.j1", cfg.EventSubject("j1"))
		assert.Equal(t, p+".dead.j1", cfg.DeadSubject("j1"))
		assert.Equal(t, p+".cancel.j1", cfg.CancelSubject("j1"))
		assert.Equal(t, p+".audit.build:42", cfg.AuditSubject("build:42"))
		assert.Equal(t, p+".audit.>", cfg.AuditWildcard())
		assert.Equal(t, p+".policy_audit", cfg.PolicyAuditSubject())
		assert.Equal(t, tc.upper+"_AUDIT", cfg.AuditStream())
		assert.Equal(t, tc.upper+"_JOBS", cfg.JobsStream())
		assert.Equal(t, tc.upper+"_RESULTS", cfg.ResultsStream())
		assert.Equal(t, tc.upper+"_APPROVALS", cfg.ApprovalsStream())
		assert.Equal(t, tc.upper+"_DECISIONS", cfg.DecisionsStream())
		assert.Equal(t, tc.upper+"_EVENTS", cfg.EventsStream())
		assert.Equal(t, tc.upper+"_DEAD", cfg.DeadStream())
		assert.Equal(t, p+"_runs", cfg.RunsBucket())
		assert.Equal(t, p+"-workers", cfg.WorkersDurable())
		assert.Equal(t, p+"-workers-gpu", cfg.ProfileWorkersDurable("gpu"))
		assert.Equal(t, p+"-deciders", cfg.DecidersDurable())
	}
}

func TestSubjectOfDottedJobIDs(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}
	// Dots inside an id are kept: external consumers subscribe to the id.
	assert.Equal(t, "jetpilot.results.a.b", cfg.ResultSubject("a.b"))
	// Empty parts would make an invalid subject; they become "~".
	assert.Equal(t, "jetpilot.results.~.a.~.~.b.~", cfg.ResultSubject(".a...b."))
	assert.NotEqual(t, cfg.ResultSubject("a..b"), cfg.ResultSubject("a.b"))
}

func TestValidateNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		substr string
	}{
		{"prefix with dot", queue.ValidatePrefix("jet.pilot"), "contains a dot at byte 3"},
		{"prefix with space", queue.ValidatePrefix("jet pilot"), "contains whitespace"},
		{"prefix wildcard", queue.ValidatePrefix("jet*"), `the wildcard '*'`},
		{"prefix colon", queue.ValidatePrefix("a:b"), `contains ':'`},
		{"profile empty", queue.ValidateProfile(""), "must not be empty"},
		{"profile gt", queue.ValidateProfile(">"), `the wildcard '>'`},
		{"profile dot", queue.ValidateProfile("gpu.big"), "a dot"},
		{"job id space", queue.ValidateJobID("a b"), "whitespace"},
		{"job id long", queue.ValidateJobID(string(make([]byte, 129))), "at most 128"},
		{"job id star", queue.ValidateJobID("a*"), "wildcard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, tc.err)
			assert.Contains(t, tc.err.Error(), tc.substr)
		})
	}
	require.NoError(t, queue.ValidateJobID("build:42.a-b_C"))
	require.NoError(t, queue.ValidateProfile("gpu-big_2"))

	err := queue.Config{Prefix: "a.b", Replicas: 7, MaxAckPending: -1}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "prefix")
	assert.Contains(t, err.Error(), "replicas: must be 1-5, got 7")
	assert.Contains(t, err.Error(), "max ack pending")
}

// TestPolicyAuditSubjectNoJobCanReach: no job id, however odd, maps onto
// the policy chain's subject, and the jobs' wildcard never matches it.
func TestPolicyAuditSubjectNoJobCanReach(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}
	policy := cfg.PolicyAuditSubject()
	for _, id := range []string{"policy_audit", ".policy_audit", "..", "~policy", "a.policy_audit", "policy_audit."} {
		assert.NotEqual(t, policy, cfg.AuditSubject(id), id)
		assert.True(t, strings.HasPrefix(cfg.AuditSubject(id), "jetpilot.audit."), id)
	}
	assert.False(t, strings.HasPrefix(policy, "jetpilot.audit."))
	assert.Equal(t, "~policy:3", queue.AuditMsgID("", 3))
	assert.Equal(t, "a:b:3", queue.AuditMsgID("a:b", 3))
}
