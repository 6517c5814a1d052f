package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// natsContext is a natscli context: the JSON file `nats context save NAME`
// writes to $XDG_CONFIG_HOME/nats/context/NAME.json (default
// ~/.config/nats/context/NAME.json), with the selected one's name in
// nats/context.txt. The fields are those of nats-io/jsm.go's natscontext
// package, read here rather than through it: that package brings the whole
// of jsm.go for a dozen JSON fields.
type natsContext struct {
	// Name is the name it was selected by; Path where it was read.
	Name string `json:"-"`
	Path string `json:"-"`

	URL         string `json:"url"`
	Token       string `json:"token"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Creds       string `json:"creds"`
	NKey        string `json:"nkey"`
	Cert        string `json:"cert"`
	Key         string `json:"key"`
	CA          string `json:"ca"`
	JSDomain    string `json:"jetstream_domain"`
	JSAPIPrefix string `json:"jetstream_api_prefix"`
	InboxPrefix string `json:"inbox_prefix"`
	TLSFirst    bool   `json:"tls_first"`

	// What jetpilot cannot honour, refused by name rather than ignored:
	// connecting without them would connect as someone else or elsewhere.
	NSC        string `json:"nsc"`
	UserJWT    string `json:"user_jwt"`
	SocksProxy string `json:"socks_proxy"`
}

// natsConfigDir is where natscli keeps its configuration:
// $XDG_CONFIG_HOME/nats, else ~/.config/nats.
func natsConfigDir() (string, error) {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "nats"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the NATS context directory: %w", err)
	}
	return filepath.Join(home, ".config", "nats"), nil
}

// selectedNATSContext is the name in nats/context.txt ("" when none is
// selected), as `nats context select` writes it.
func selectedNATSContext() (string, error) {
	dir, err := natsConfigDir()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "context.txt"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the selected NATS context: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// loadNATSContext reads the context name: a context's name, or the path of
// a context file (a name with a path separator or ending in .json). The error names the
// context and the field, never a secret's value.
func loadNATSContext(name string) (*natsContext, error) {
	path := name
	if !strings.ContainsRune(name, os.PathSeparator) && !strings.HasSuffix(name, ".json") {
		if name == "" || strings.Contains(name, "..") {
			return nil, fmt.Errorf("NATS context %q: not a context name", name)
		}
		dir, err := natsConfigDir()
		if err != nil {
			return nil, err
		}
		path = filepath.Join(dir, "context", name+".json")
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("unknown NATS context %q (no %s; known: %s)", name, path, knownNATSContexts(dir))
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read NATS context %q: %w", name, err)
	}
	c := &natsContext{Name: name, Path: path}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("NATS context %q (%s) is not valid JSON: %w", name, path, err)
	}
	for field, v := range map[string]string{"nsc": c.NSC, "user_jwt": c.UserJWT, "socks_proxy": c.SocksProxy} {
		if v != "" {
			return nil, fmt.Errorf("NATS context %q sets %s, which jetpilot does not support: use a context with creds, nkey, user/password or token", name, field)
		}
	}
	for _, p := range []*string{&c.Creds, &c.NKey, &c.Cert, &c.Key, &c.CA} {
		*p = expandPath(*p)
	}
	for field, p := range map[string]*string{"password": &c.Password, "token": &c.Token} {
		v, err := resolveSecretRef(*p)
		if err != nil {
			return nil, fmt.Errorf("NATS context %q: %s: %w", name, field, err)
		}
		*p = v
	}
	return c, nil
}

// knownNATSContexts lists the context names in dir, for an error message.
func knownNATSContexts(dir string) string {
	entries, err := os.ReadDir(filepath.Join(dir, "context"))
	if err != nil {
		return "none"
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// expandPath expands a leading ~ and environment variables in a file path
// of a context, as natscontext does, and drops a file:// scheme.
func expandPath(p string) string {
	if p == "" {
		return p
	}
	p = strings.TrimPrefix(p, "file://")
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	return os.ExpandEnv(p)
}

// resolveSecretRef reads a context's password or token: a literal value,
// env://NAME (the variable's value) or file://PATH (the file's contents).
// The other references natscontext can resolve (op://, nsc://, data:) are
// refused by name.
func resolveSecretRef(v string) (string, error) {
	switch {
	case strings.HasPrefix(v, "env://"):
		name := strings.TrimPrefix(v, "env://")
		s := os.Getenv(name)
		if s == "" {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return s, nil
	case strings.HasPrefix(v, "file://"):
		return readSecretFile(expandPath(v))
	case strings.HasPrefix(v, "op://"), strings.HasPrefix(v, "nsc://"), strings.HasPrefix(v, "data:"):
		scheme, _, _ := strings.Cut(v, ":")
		return "", fmt.Errorf("a %s: reference, which jetpilot does not resolve (use env:// or file://)", scheme)
	}
	return v, nil
}
