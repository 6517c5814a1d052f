package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/jetpilot-dev/jetpilot/signing"
)

// defaultKeyFile is where `keys new` writes a seed when --out is not given.
const defaultKeyFile = "approver.nk"

// newKeysCmd is `jetpilot keys`: an approver's (or producer's) signing key.
// A key is an NATS nkey user key; the seed stays in a file only its owner
// can read, the public key goes into the policy.
func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Make and inspect signing keys for decisions and jobs (nkey user keys)",
	}
	cmd.AddCommand(newKeysNewCmd(), newKeysPubCmd())
	return cmd
}

func newKeysNewCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "new [--out FILE]",
		Short: "Make a new signing key: write its seed to FILE (mode 0600) and print its public key",
		Long: "Make a new signing key. The seed (SU...) is written to FILE, readable by you only; keep it secret.\n" +
			"Only the public key (U...) is printed: list it under approvers: (or producers:) in the policy,\n" +
			"and sign with `jetpilot approve --key FILE`. An existing FILE is never overwritten.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seed, pub, err := signing.NewSeed()
			if err != nil {
				return err
			}
			defer wipe(seed)
			// O_EXCL: never overwrite a key (it may be the only copy);
			// 0600 from the start, so the seed is never readable by others,
			// not even for a moment.
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, fs.ErrExist) {
				return usageError("%s already exists: not overwriting a key (choose another --out, or remove it yourself)", out)
			}
			if err != nil {
				return fmt.Errorf("write key: %w", err)
			}
			_, werr := f.Write(append(append([]byte(nil), seed...), '\n'))
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				os.Remove(out)
				return fmt.Errorf("write key %s: %w", out, werr)
			}
			fmt.Fprintln(cmd.OutOrStdout(), pub)
			fmt.Fprintf(cmd.ErrOrStderr(), "seed written to %s (mode 0600; keep it secret). The line above is the public key for the policy.\n", out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", defaultKeyFile, "file to write the seed to (must not exist)")
	return cmd
}

func newKeysPubCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pub FILE",
		Short: "Print the public key of a seed file (for the policy's approvers: or producers:)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seed, err := readSeedFile(args[0])
			if err != nil {
				return err
			}
			defer wipe(seed)
			pub, err := signing.PublicKey(seed)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), pub)
			return nil
		},
	}
}

// readSeedFile reads an nkey user seed from path: a file with the seed on a
// line of its own (as `keys new` writes it, or as nk -gen user writes it),
// or a NATS .creds file. Like ssh with a private key, it refuses a file
// that its group or others may read or write: the seed is the approver's
// signature, and a key others could read is no proof of who decided. The
// seed never appears in an error.
func readSeedFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("read key: %s is a directory, not a seed file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is accessible by others (mode %04o): a signing key must be private to you; run chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	defer wipe(data)
	// Lines trimmed: a seed file edited on Windows (CRLF) or indented is
	// still the same seed; nkeys would refuse it.
	lines := bytes.Split(data, []byte("\n"))
	for i := range lines {
		lines[i] = bytes.TrimSpace(lines[i])
	}
	trimmed := bytes.Join(lines, []byte("\n"))
	defer wipe(trimmed)
	kp, err := nkeys.ParseDecoratedUserNKey(trimmed)
	if err != nil {
		return nil, fmt.Errorf("key file %s holds no nkey user seed (SU...): %v", path, err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("key file %s: %v", path, err)
	}
	return append([]byte(nil), seed...), nil
}

// wipe overwrites a secret in memory once it is no longer needed.
func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
