package signing

import (
	"fmt"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// SignDecision signs d with seed, an nkey user seed, and sets
// d.Signature: d is encoded without a signature (schemas.Encode, as it
// will be published), and the encoding signed. Set PendingDigest and
// DecidedAt first: they are part of what is signed. DecidedAt is set to
// UTC, as the schema wants it.
func SignDecision(d *schemas.Decision, seed []byte) error {
	d.Signature = nil
	if !d.DecidedAt.IsZero() {
		d.DecidedAt = d.DecidedAt.UTC()
	}
	raw, err := schemas.Encode(d)
	if err != nil {
		return fmt.Errorf("sign decision: encode: %w", err)
	}
	sig, err := Sign(raw, seed)
	if err != nil {
		return fmt.Errorf("sign decision: %w", err)
	}
	d.Signature = &sig
	return nil
}

// SignJob signs j with seed, an nkey user seed, and sets j.Signature, as
// SignDecision does for decisions. Set RequestedBy first.
func SignJob(j *schemas.Job, seed []byte) error {
	j.Signature = nil
	raw, err := schemas.Encode(j)
	if err != nil {
		return fmt.Errorf("sign job: encode: %w", err)
	}
	sig, err := Sign(raw, seed)
	if err != nil {
		return fmt.Errorf("sign job: %w", err)
	}
	j.Signature = &sig
	return nil
}

// SignSteer signs a steering request with seed, an nkey user seed, and sets
// s.Signature, as SignDecision does for decisions. Set SentAt first: a
// worker refuses a signed request that is not recent.
func SignSteer(s *schemas.SteerRequest, seed []byte) error {
	s.Signature = nil
	if s.SentAt != nil {
		t := s.SentAt.UTC()
		s.SentAt = &t
	}
	raw, err := schemas.Encode(s)
	if err != nil {
		return fmt.Errorf("sign steer request: encode: %w", err)
	}
	sig, err := Sign(raw, seed)
	if err != nil {
		return fmt.Errorf("sign steer request: %w", err)
	}
	s.Signature = &sig
	return nil
}
