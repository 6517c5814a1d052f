package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"1GiB": 1 << 30, "256MiB": 256 << 20, "64mib": 64 << 20, "500MB": 500e6, "2G": 2 << 30,
		"1048576": 1 << 20, "10B": 10, "-1": -1, "unlimited": -1, "1 TiB": 1 << 40,
	} {
		got, err := parseByteSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "-2", "lots", "1.5GiB", "9999999TiB"} {
		_, err := parseByteSize(in)
		require.ErrorContains(t, err, "want a positive whole number", in)
	}
	assert.Equal(t, "1GiB", formatBytes(1<<30))
	assert.Equal(t, "1536MiB", formatBytes(1536<<20))
	assert.Equal(t, "500000000B", formatBytes(500e6))
	assert.Equal(t, "unlimited", formatBytes(-1))
}

func TestDescribeSync(t *testing.T) {
	t.Parallel()
	got := describeSync(syncReport{servers: []serverFsync{{Server: "n1", Always: true}, {Server: "n2", Interval: 2 * time.Minute}}})
	assert.Equal(t, "fsync: n1 always, n2 every 2m0s\nwarning: lazy fsync on n2: acknowledged writes can be lost on power failure; "+
		"set `sync_interval: always` in every nats-server's jetstream block", got)
	assert.Equal(t, "fsync: n1 always", describeSync(syncReport{servers: []serverFsync{{Server: "n1", Always: true}}}))
	assert.Contains(t, describeSync(syncReport{unknown: "not visible to this NATS user (x)"}), "fsync: not visible to this NATS user (x); unless every nats-server has `sync_interval: always`")
}
