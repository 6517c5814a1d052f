package faults

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// pki is a CA and the files of a server and a client certificate it signed.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// newPKI generates an ECDSA P-256 CA, a server certificate for 127.0.0.1
// and a client certificate, and writes them as PEM files into dir.
func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "jetpilot faults CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	p := pki{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)

	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		keyDER, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth, nil)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

// TestNATSWithTLS: a nats-server that requires TLS with client
// certificates (mutual TLS), certificates generated here. A worker with
// --tlsca/--tlscert/--tlskey runs a job; one without a client certificate
// is refused with a clear error.
func TestNATSWithTLS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir)
	ns := newNatsServer(t, natsConfig{extra: fmt.Sprintf("tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true, timeout: 5 }\n",
		p.serverCert, p.serverKey, p.ca)})
	ns.clientTL = "tls://"
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, ns.URL(), nats.RootCAs(p.ca), nats.ClientCert(p.clientCert, p.clientKey))
	startWorker(t, workerOpts{name: "tls", natsURL: ns.URL(), agentURL: simURL,
		extra: []string{"--tlsca", p.ca, "--tlscert", p.clientCert, "--tlskey", p.clientKey}})
	client := queue.NewClient(js, queue.Config{})
	ctx := testsupport.Context(t, waitFor)
	_, err := client.Submit(ctx, schemas.Job{ID: "tls-1", Prompt: "#sim text over TLS"})
	require.NoError(t, err)
	res, err := client.WaitResult(ctx, "tls-1")
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "over TLS", res.Stdout)
	assert.Equal(t, 1, sim.RunsStarted())

	// The CA file alone is not enough: the server wants a client certificate.
	noCert := testsupport.StartProc(t, "worker without client cert", nil, jpBin, "worker", "--nats", ns.URL(), "--agent-url", simURL, "--tlsca", p.ca)
	assert.NotZero(t, noCert.ExitCode(t, waitFor))
	assert.Contains(t, noCert.Output(), "connect to NATS")
	// Without the CA the server's certificate is not trusted.
	noCA := testsupport.StartProc(t, "worker without CA", nil, jpBin, "worker", "--nats", ns.URL(), "--agent-url", simURL,
		"--tlscert", p.clientCert, "--tlskey", p.clientKey)
	assert.NotZero(t, noCA.ExitCode(t, waitFor))
	assert.Contains(t, noCA.Output(), "certificate", "the error names the certificate problem")
}

// TestWorkerLacksPermission: a worker whose NATS user may not do what a
// worker must exits with an error that says which permission is missing,
// instead of hanging or retrying forever.
func TestWorkerLacksPermission(t *testing.T) {
	limited := func(name, deny string) string {
		return fmt.Sprintf("{user: %s, password: pw, permissions: {publish: {allow: \">\", deny: [%s]}}}", name, deny)
	}
	ns := newNatsServer(t, natsConfig{extra: authConfig(
		limited("nostreams", `"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>"`),
		limited("noresults", `"jetpilot.results.>"`),
	)})
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	url := fmt.Sprintf("nats://127.0.0.1:%d", ns.port)

	t.Run("may not create streams, none exist", func(t *testing.T) {
		w := testsupport.StartProc(t, "worker nostreams", nil, jpBin, "worker", "--nats", url, "--user", "nostreams", "--password", "pw", "--agent-url", simURL)
		assert.NotZero(t, w.ExitCode(t, waitFor))
		out := w.Output()
		assert.Contains(t, out, "jetpilot setup", "says how to fix it")
		assert.Contains(t, out, "lacks a permission", "says a permission is missing")
		assert.Contains(t, out, "$JS.API.STREAM.", "names the permission")
	})

	_, js := connect(t, ns.URL(), nats.UserInfo(natsUser, natsPassword))
	ctx := testsupport.Context(t, waitFor)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{}), "an admin runs setup")

	t.Run("may not create streams, an admin made them", func(t *testing.T) {
		startWorker(t, workerOpts{name: "least-privilege", natsURL: url, agentURL: simURL, extra: []string{"--user", "nostreams", "--password", "pw"}})
		client := queue.NewClient(js, queue.Config{})
		_, err := client.Submit(ctx, schemas.Job{ID: "least-1", Prompt: "#sim text fine"})
		require.NoError(t, err)
		res, err := client.WaitResult(ctx, "least-1")
		require.NoError(t, err)
		assert.Equal(t, schemas.StatusCompleted, res.Status)
	})

	t.Run("may not publish results", func(t *testing.T) {
		w := testsupport.StartProc(t, "worker noresults", nil, jpBin, "worker", "--nats", url, "--user", "noresults", "--password", "pw", "--agent-url", simURL)
		assert.NotZero(t, w.ExitCode(t, waitFor))
		out := w.Output()
		assert.Contains(t, out, "may not publish on jetpilot.results.", "names the subject")
		assert.Contains(t, out, "Permissions Violation", "passes on what the server said")
	})
}
