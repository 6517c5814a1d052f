package schemas

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// maxProblems caps how many problems one ValidationError lists, so a job
// with ten thousand bad array items still gets a readable answer.
const maxProblems = 50

// ValidationError says everything that is wrong with a message, field by
// field. DecodeJob, DecodeDecision and Validate return it for bad input;
// ToError turns it into the Error carried by a rejected Result.
type ValidationError struct {
	// Code is the Error code ToError reports. Empty means "invalid_job";
	// the decoders set "invalid_job", "invalid_decision" and so on.
	Code string
	// Problems are sorted by field path; at most 50, then one that says
	// how many more there were.
	Problems []FieldError
}

func (e *ValidationError) code() string {
	if e.Code == "" {
		return "invalid_job"
	}
	return e.Code
}

// Error lists every problem: "invalid job: id: ...; prompt: ...".
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(strings.ReplaceAll(e.code(), "_", " "))
	for i, p := range e.Problems {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// ToError is the machine-readable form for a Result or an event:
// Code "invalid_job" (or e.Code), Message Error(), Fields the problems.
func (e *ValidationError) ToError() *Error {
	return &Error{Code: e.code(), Message: e.Error(), Fields: slices.Clone(e.Problems)}
}

// newValidationError returns nil when there are no problems, else a
// *ValidationError for the schema kind with the problems sorted and capped.
func newValidationError(kind string, problems []FieldError) error {
	if len(problems) == 0 {
		return nil
	}
	sortProblems(problems)
	problems = slices.CompactFunc(problems, func(a, b FieldError) bool { return a == b })
	if n := len(problems); n > maxProblems {
		extra := n - maxProblems
		problems = append(problems[:maxProblems:maxProblems], FieldError{
			Reason: fmt.Sprintf("and %d more problem%s", extra, plural(extra)),
		})
	}
	return &ValidationError{Code: "invalid_" + kind, Problems: problems}
}

// sortProblems orders problems by path, numeric segments numerically
// (caller_context/2 before caller_context/10), so output is stable.
func sortProblems(problems []FieldError) {
	slices.SortStableFunc(problems, func(a, b FieldError) int {
		if c := comparePaths(a.Field, b.Field); c != 0 {
			return c
		}
		return strings.Compare(a.Reason, b.Reason)
	})
}

func comparePaths(a, b string) int {
	if a == b {
		return 0
	}
	as, bs := splitPath(a), splitPath(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		ai, aerr := strconv.Atoi(as[i])
		bi, berr := strconv.Atoi(bs[i])
		if aerr == nil && berr == nil {
			return cmp.Compare(ai, bi)
		}
		return strings.Compare(as[i], bs[i])
	}
	return cmp.Compare(len(as), len(bs))
}

func splitPath(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
