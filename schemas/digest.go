package schemas

import (
	"crypto/sha256"
	"encoding/hex"
)

// JobDigest is the lowercase hex SHA-256 of raw, the payload of a job
// message exactly as published or received. Results carry it as job_digest.
func JobDigest(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}
