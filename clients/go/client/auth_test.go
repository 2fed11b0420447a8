package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cachet-dev/cachet/clients/go/client"
)

// A server with TLS, client certificates (mutual TLS) and auth required, and an API
// key granted one namespace for read and write.
const (
	authNamespace = "go-tls"
	authToken     = "go-test-key-7f1c2a"
)

type pki struct {
	dir                       string
	ca, serverCert, serverKey string
	clientCert, clientKey     string
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newPKI makes a CA, a server certificate for 127.0.0.1 and a client certificate.
func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	p := pki{dir: dir, ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"),
		serverKey: filepath.Join(dir, "server-key.pem"), clientCert: filepath.Join(dir, "client.pem"),
		clientKey: filepath.Join(dir, "client-key.pem")}
	caKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cachet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER := must(x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey))(t)
	caCert := must(x509.ParseCertificate(caDER))(t)
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	issue := func(serial int64, name string, usage x509.ExtKeyUsage, certPath, keyPath string) {
		key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
		template := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			template.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			template.DNSNames = []string{"localhost"}
		}
		der := must(x509.CreateCertificate(rand.Reader, template, caCert, &key.PublicKey, caKey))(t)
		writePEM(t, certPath, "CERTIFICATE", der)
		writePEM(t, keyPath, "PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(key))(t))
	}
	issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, p.serverCert, p.serverKey)
	issue(3, "go-client", x509.ExtKeyUsageClientAuth, p.clientCert, p.clientKey)
	return p
}

func startAuthServer(t *testing.T) (*testServer, pki) {
	t.Helper()
	p := newPKI(t)
	digest := sha256.Sum256([]byte(authToken))
	config := filepath.Join(p.dir, "cachet.yaml")
	yaml := "auth:\n  mode: required\n  api_keys:\n" +
		"    - id: go-test\n      sha256: " + hex.EncodeToString(digest[:]) + "\n" +
		"      namespaces: [" + authNamespace + "]\n      roles: [read, write]\n"
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	server, err := startTestServer("CACHET_CONFIG_FILE="+config, "CACHET_AUTH__MODE=required",
		"CACHET_TLS__CERT_FILE="+p.serverCert, "CACHET_TLS__KEY_FILE="+p.serverKey, "CACHET_TLS__CLIENT_CA_FILE="+p.ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(server.stop)
	return server, p
}

func TestTLSAndCredentials(t *testing.T) {
	server, p := startAuthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mtls := must(client.WithTLSFiles(p.ca, p.clientCert, p.clientKey))(t)
	dial := func(namespace string, opts ...grpc.DialOption) *client.Client {
		t.Helper()
		c := must(client.Dial(server.addr, namespace, append([]grpc.DialOption{mtls}, opts...)...))(t)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	// The README's example: a static token over mutual TLS.
	address, caFile, certFile, keyFile, token := server.addr, p.ca, p.clientCert, p.clientKey, authToken
	// example: tls
	tls, err := client.WithTLSFiles(caFile, certFile, keyFile) // the CA; a client certificate for mTLS ("" to skip)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(address, "go-tls", tls,
		client.WithToken(token), // or WithTokenSource(func(ctx) (string, error)) to refresh it
	)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// end
	if value := must(c.Get(ctx, "k"))(t); value == nil || string(value.Data) != "v" {
		t.Fatalf("Get over TLS answered %+v", value)
	}
	// The token on a stream and on a bidirectional stream.
	messages := must(c.Events().Subscribe(ctx, []string{"news"}, nil))(t)
	if n := must(c.Events().Publish(ctx, "news", &client.Event{Payload: []byte("hi")}))(t); n != 1 {
		t.Fatalf("Publish reached %d subscribers", n)
	}
	for message, err := range messages {
		if err != nil || string(message.GetEvent().GetPayload()) != "hi" {
			t.Fatalf("Subscribe with a token yielded %v %v", message, err)
		}
		break
	}
	held := must(c.Locks().Hold(ctx, "leader", 5*time.Second, client.LockOptions{}))(t) // a bidi stream
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// A token source is asked on every call, so it can refresh the token.
	var asked atomic.Int32
	refreshing := dial(authNamespace, client.WithTokenSource(func(context.Context) (string, error) {
		asked.Add(1)
		return authToken, nil
	}))
	for range 3 {
		if _, err := refreshing.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	if n := asked.Load(); n < 3 {
		t.Fatalf("the token source was asked %d times for 3 calls", n)
	}

	// No token, a wrong token, another namespace, a missing role.
	if _, err := dial(authNamespace).Get(ctx, "k"); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("a call without token answered %v", err)
	}
	if _, err := dial(authNamespace, client.WithToken("wrong")).Get(ctx, "k"); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("a wrong token answered %v", err)
	}
	if _, err := dial("someone-else", client.WithToken(authToken)).Get(ctx, "k"); !errors.Is(err, client.ErrPermissionDenied) || !errors.Is(err, client.ErrNamespaceNotGranted) {
		t.Fatalf("a namespace outside the grant answered %v", err)
	}
	if _, err := c.Admin().ServerInfo(ctx); !errors.Is(err, client.ErrPermissionDenied) || !errors.Is(err, client.ErrRoleNotGranted) {
		t.Fatalf("an admin call without the admin role answered %v", err)
	}
	// TLS without the client certificate, and plaintext: no connection.
	serverOnly := must(client.WithTLSFiles(p.ca, "", ""))(t)
	noCert := must(client.Dial(server.addr, authNamespace, serverOnly, client.WithToken(authToken)))(t)
	defer noCert.Close()
	if _, err := noCert.Get(ctx, "k"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("TLS without a client certificate answered %v", err)
	}
	plain := must(client.Dial(server.addr, authNamespace))(t)
	defer plain.Close()
	if _, err := plain.Get(ctx, "k"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("plaintext to a TLS server answered %v", err)
	}
}
