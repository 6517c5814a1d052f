package agentsim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestIdemStoreSweepsInExpiryOrder(t *testing.T) {
	now := time.Unix(1000, 0)
	st := newIdemStore(time.Minute)
	st.now = func() time.Time { return now }
	ctx := context.Background()

	claim := func(key string) *idemEntry {
		out, e, err := st.begin(ctx, key, "/p", []byte(key))
		require.NoError(t, err)
		require.Equal(t, idemProceed, out, key)
		return e
	}
	// a is still in flight when it expires; b..e answered.
	a := claim("a")
	for i := range 4 {
		e := claim(fmt.Sprintf("k%d", i))
		st.finish(fmt.Sprintf("k%d", i), "/p", e, 201, []byte("{}"))
		now = now.Add(time.Second)
	}
	// A 5xx answer is forgotten at once.
	f := claim("f")
	st.finish("f", "/p", f, 503, nil)
	require.Len(t, st.entries, 5)

	now = now.Add(2 * time.Minute)
	// a blocks the queue while in flight, but an expired key looked up
	// directly is expired anyway.
	k2 := claim("k2")
	st.finish("k2", "/p", k2, 201, []byte("{}"))
	require.Contains(t, st.entries, idemKey{"a", "/p"})
	require.Contains(t, st.entries, idemKey{"k0", "/p"})
	st.finish("a", "/p", a, 201, []byte("{}"))
	g := claim("g")
	require.Len(t, st.entries, 2) // k2 (claimed again) and g
	require.Contains(t, st.entries, idemKey{"k2", "/p"})

	// A key not yet expired replays.
	st.finish("g", "/p", g, 201, []byte("{}"))
	out, _, err := st.begin(ctx, "g", "/p", []byte("g"))
	require.NoError(t, err)
	require.Equal(t, idemReplay, out)
	// Once everything expired, the queue is empty again.
	now = now.Add(2 * time.Minute)
	claim("h")
	require.Len(t, st.entries, 1)
	require.Len(t, st.order[st.head:], 1)
}
