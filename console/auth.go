package console

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"sigs.k8s.io/yaml"
)

// Role is what a user may do.
type Role string

const (
	// RoleViewer reads every page and changes nothing.
	RoleViewer Role = "viewer"
	// RoleApprover also decides approvals and requeues dead letters.
	RoleApprover Role = "approver"
)

// User is someone signed in.
type User struct {
	Name string
	Role Role
	// Approver is the user's name among the policy's approvers; the key a
	// signed decision carries must be that approver's. Empty for an
	// approver: whichever approver the signing key is (the token of
	// `jetpilot dev`).
	Approver string
}

// CanDecide reports whether u may publish decisions and requeue jobs.
func (u User) CanDecide() bool { return u.Role == RoleApprover }

// userEntry is one user of a users file.
type userEntry struct {
	Name         string `json:"name"`
	PasswordHash string `json:"password_hash"`
	Role         Role   `json:"role"`
	Approver     string `json:"approver,omitempty"`
}

// Users are the people who may sign in with a password.
type Users struct {
	byName map[string]userEntry
}

// usersFile is the users file's document.
type usersFile struct {
	Users []userEntry `json:"users"`
}

// ErrBadUsers: a users file that cannot be used; the error says why.
var ErrBadUsers = errors.New("invalid users file")

// LoadUsers reads a users file (YAML or JSON):
//
//	users:
//	  - {name: alice, password_hash: "$2a$10$...", role: approver, approver: alice}
//	  - {name: ops, password_hash: "$2a$10$...", role: viewer}
//
// password_hash is bcrypt (`jetpilot console passwd`, or htpasswd -nB);
// role is viewer or approver; approver (default: name) is the user's name
// among the policy's approvers.
func LoadUsers(path string) (*Users, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read users file: %w", err)
	}
	return ParseUsers(data)
}

// ParseUsers parses a users file's content (see LoadUsers).
func ParseUsers(data []byte) (*Users, error) {
	var doc usersFile
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadUsers, err)
	}
	if len(doc.Users) == 0 {
		return nil, fmt.Errorf("%w: no users", ErrBadUsers)
	}
	u := &Users{byName: map[string]userEntry{}}
	var problems []string
	for i, e := range doc.Users {
		where := fmt.Sprintf("users[%d]", i)
		switch {
		case e.Name == "":
			problems = append(problems, where+": name is empty")
		case u.byName[e.Name].Name != "":
			problems = append(problems, fmt.Sprintf("%s: user %q is listed twice", where, e.Name))
		}
		if _, err := bcrypt.Cost([]byte(e.PasswordHash)); err != nil {
			problems = append(problems, fmt.Sprintf("%s (%s): password_hash is not a bcrypt hash", where, e.Name))
		}
		switch e.Role {
		case RoleViewer:
			e.Approver = ""
		case RoleApprover:
			if e.Approver == "" {
				e.Approver = e.Name
			}
		default:
			problems = append(problems, fmt.Sprintf("%s (%s): role must be viewer or approver, got %q", where, e.Name, e.Role))
		}
		u.byName[e.Name] = e
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrBadUsers, strings.Join(problems, "; "))
	}
	return u, nil
}

// dummyHash makes an unknown user's sign-in take as long as a known one's;
// made on first use, not at start-up (bcrypt is slow on purpose).
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("dummy password"), bcrypt.DefaultCost)
	return h
})

// check returns the user with this name and password.
func (u *Users) check(name, password string) (User, bool) {
	e, ok := u.byName[name]
	hash := []byte(e.PasswordHash)
	if !ok {
		hash = dummyHash()
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil || !ok {
		return User{}, false
	}
	return User{Name: e.Name, Role: e.Role, Approver: e.Approver}, true
}

// HashPassword returns the bcrypt hash of a password for a users file.
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errors.New("hash password: the password is empty")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// Auth says who may sign in: holders of Token, users of Users, or both.
type Auth struct {
	// Token signs in as TokenUser. Compared in constant time.
	Token string
	// TokenUser is who the token signs in as. Default: a viewer named
	// "token".
	TokenUser User
	Users     *Users
}

// LoadToken reads a token file: its content without surrounding white
// space, at least 16 bytes.
func LoadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	tok := string(bytes.TrimSpace(data))
	if len(tok) < 16 {
		return "", fmt.Errorf("token file %s: the token must be at least 16 characters", path)
	}
	return tok, nil
}

// NewToken returns a random token (32 bytes, base64url).
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func (a Auth) checkToken(token string) (User, bool) {
	if a.Token == "" || token == "" {
		return User{}, false
	}
	// Hash both so the comparison does not leak the token's length.
	x, y := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(a.Token))
	if subtle.ConstantTimeCompare(x[:], y[:]) != 1 {
		return User{}, false
	}
	u := a.TokenUser
	if u.Name == "" {
		u.Name = "token"
	}
	if u.Role == "" {
		u.Role = RoleViewer
	}
	return u, true
}

// session is one signed-in browser.
type session struct {
	user    User
	csrf    string
	expires time.Time
}

// sessions are kept in memory: signing in again after a restart is the
// price of holding nothing on disk.
type sessions struct {
	mu  sync.Mutex
	m   map[string]*session
	ttl time.Duration
	max int
}

func newSessions(ttl time.Duration, max int) *sessions {
	return &sessions{m: map[string]*session{}, ttl: ttl, max: max}
}

// errTooManySessions: the session table is full of live sessions.
var errTooManySessions = errors.New("too many signed-in sessions; try again later")

// create starts a session for u and returns its id.
func (s *sessions) create(u User) (string, *session, error) {
	id, err := NewToken()
	if err != nil {
		return "", nil, err
	}
	csrf, err := NewToken()
	if err != nil {
		return "", nil, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max {
		for k, v := range s.m {
			if now.After(v.expires) {
				delete(s.m, k)
			}
		}
		if len(s.m) >= s.max {
			return "", nil, errTooManySessions
		}
	}
	sess := &session{user: u, csrf: csrf, expires: now.Add(s.ttl)}
	s.m[id] = sess
	return id, sess, nil
}

func (s *sessions) get(id string) (*session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.m[id]
	if !ok {
		return nil, false
	}
	if time.Now().After(sess.expires) {
		delete(s.m, id)
		return nil, false
	}
	return sess, true
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}
