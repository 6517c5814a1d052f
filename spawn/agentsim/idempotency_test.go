package agentsim

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestIdemStoreScopeAndExpiry(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	st := newIdemStore(time.Minute)
	st.now = func() time.Time { return now }
	k := idemKey{"POST", "/p", "k"}

	out, _ := st.lookup(k, []byte(`{"a":1}`))
	require.Equal(t, idemProceed, out)
	st.save(k, []byte(`{"a":1}`), 201, []byte(`{"id":1}`))
	out, e := st.lookup(k, []byte(`{"a":1}`))
	require.Equal(t, idemReplay, out)
	require.Equal(t, 201, e.status)
	require.JSONEq(t, `{"id":1}`, string(e.body))
	out, _ = st.lookup(k, []byte(`{"a":2}`))
	require.Equal(t, idemConflict, out)
	// Method, path and key all scope an entry.
	for _, other := range []idemKey{{"PUT", "/p", "k"}, {"POST", "/q", "k"}, {"POST", "/p", "k2"}} {
		out, _ = st.lookup(other, []byte(`{"a":2}`))
		require.Equal(t, idemProceed, out, other)
	}
	// A later save of a key wins (two requests that both ran).
	st.save(k, []byte(`{"a":1}`), 201, []byte(`{"id":2}`))
	_, e = st.lookup(k, []byte(`{"a":1}`))
	require.JSONEq(t, `{"id":2}`, string(e.body))

	for i := range 3 {
		now = now.Add(10 * time.Second)
		st.save(idemKey{"POST", "/p", string(rune('a' + i))}, nil, 200, nil)
	}
	now = now.Add(45 * time.Second) // k and "a" expired; "b", "c" not
	out, _ = st.lookup(k, []byte(`{"a":1}`))
	require.Equal(t, idemProceed, out, "expired")
	require.Len(t, st.entries, 2)
	now = now.Add(time.Hour)
	out, _ = st.lookup(k, nil)
	require.Equal(t, idemProceed, out)
	require.Empty(t, st.entries)
	require.Empty(t, st.order[st.head:])
}
