package signing

import (
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCanonicalizeRFC8785 checks the library against the RFC's own
// examples: §3.2.2 (primitives), §3.2.3 (sorting) and Appendix B (numbers).
func TestCanonicalizeRFC8785(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"3.2.2 primitives", `{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`, `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{"3.2.3 sorting", `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`, "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\"," +
			"\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"nested objects sort, arrays keep their order", `{"b":[{"z":1,"y":2},3],"a":{"d":{},"c":[]}}`, `{"a":{"c":[],"d":{}},"b":[{"y":2,"z":1},3]}`},
		{"white space, U+2028 and HTML characters left alone", " {\"a\" : \"\u2028<&>\" } ", "{\"a\":\"\u2028<&>\"}"},
		{"scalars", ` "x" `, `"x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tc.in))
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}

// TestCanonicalNumbers: RFC 8785 Appendix B, each IEEE 754 value written
// out by Go in the shortest form that reads back the same, then
// canonicalised.
func TestCanonicalNumbers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		bits uint64
		want string
	}{
		{0x0000000000000000, "0"},
		{0x8000000000000000, "0"},
		{0x0000000000000001, "5e-324"},
		{0x8000000000000001, "-5e-324"},
		{0x7fefffffffffffff, "1.7976931348623157e+308"},
		{0xffefffffffffffff, "-1.7976931348623157e+308"},
		{0x4340000000000000, "9007199254740992"},
		{0xc340000000000000, "-9007199254740992"},
		{0x4430000000000000, "295147905179352830000"},
		{0x44b52d02c7e14af5, "9.999999999999997e+22"},
		{0x44b52d02c7e14af6, "1e+23"},
		{0x44b52d02c7e14af7, "1.0000000000000001e+23"},
		{0x444b1ae4d6e2ef4e, "999999999999999700000"},
		{0x444b1ae4d6e2ef4f, "999999999999999900000"},
		{0x444b1ae4d6e2ef50, "1e+21"},
		{0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
		{0x3eb0c6f7a0b5ed8d, "0.000001"},
		{0x41b3de4355555553, "333333333.3333332"},
		{0x41b3de4355555554, "333333333.33333325"},
		{0x41b3de4355555555, "333333333.3333333"},
		{0x41b3de4355555556, "333333333.3333334"},
		{0x41b3de4355555557, "333333333.33333343"},
		{0xbecbf647612f3696, "-0.0000033333333333333333"},
		{0x43143ff3c1cb0959, "1424953923781206.2"},
	} {
		f := math.Float64frombits(tc.bits)
		in := strconv.FormatFloat(f, 'g', -1, 64)
		got, err := Canonicalize([]byte("[" + in + "]"))
		require.NoError(t, err, in)
		assert.Equal(t, "["+tc.want+"]", string(got), "%016x (%s)", tc.bits, in)
	}
}

func TestCanonicalizeRefuses(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"empty":                   ``,
		"not JSON":                `{"a":`,
		"two values":              `{} {}`,
		"duplicate name":          `{"a":1,"a":1}`,
		"duplicate, escaped":      `{"a":1,"\u0061":2}`,
		"nested duplicate":        `{"x":{"a":1,"a":2}}`,
		"lone high surrogate":     `{"a":"\ud800"}`,
		"lone low surrogate":      `{"a":"\udc00x"}`,
		"invalid UTF-8":           "{\"a\":\"\xff\"}",
		"number out of range":     `[1e400]`,
		"leading zero":            `[01]`,
		"plus sign":               `[+1]`,
		"NaN":                     `[NaN]`,
		"raw control character":   "[\"\x01\"]",
		"byte order mark":         "\ufeff{}",
		"single quotes":           `{'a':1}`,
		"trailing comma":          `{"a":1,}`,
		"unknown escape":          `["\x"]`,
		"surrogate pair reversed": `["\udc00\ud800"]`,
	} {
		_, err := Canonicalize([]byte(in))
		assert.ErrorIs(t, err, ErrMalformedDocument, name)
	}
	_, err := Canonicalize(nil)
	assert.ErrorIs(t, err, ErrMalformedDocument)
}

// TestCanonicalDocument: only the top-level "signature" is left out,
// wherever it is and however its name is written.
func TestCanonicalDocument(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"none", `{"b":1,"a":2}`, `{"a":2,"b":1}`},
		{"first", `{"signature":{"key":"k"},"z":1,"y":2}`, `{"y":2,"z":1}`},
		{"middle", `{"z":1,"signature":"x","a":2}`, `{"a":2,"z":1}`},
		{"last", `{"a":1,"signature":null}`, `{"a":1}`},
		{"only", `{"signature":[1,{"a":"}"}]}`, `{}`},
		{"escaped name", `{"sig\u006eature":{"key":"k"},"a":1}`, `{"a":1}`},
		{"nested kept", `{"a":{"signature":1},"signatures":2,"Signature":3}`, `{"Signature":3,"a":{"signature":1},"signatures":2}`},
		{"strings with braces", `{"a":"},\"signature\":1","signature":1}`, `{"a":"},\"signature\":1"}`},
		{"empty", `{}`, `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CanonicalDocument([]byte(tc.in))
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
	for name, in := range map[string]string{
		"array": `[{"signature":1}]`, "string": `"{}"`, "number": `1`, "null": `null`,
		"two signatures": `{"signature":1,"signature":2}`, "two, one escaped": `{"signature":1,"sig\u006eature":2}`,
	} {
		_, err := CanonicalDocument([]byte(in))
		assert.ErrorIs(t, err, ErrMalformedDocument, name)
		_, err = DocumentDigest([]byte(in))
		assert.ErrorIs(t, err, ErrMalformedDocument, name)
	}
}
