package client_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachet-dev/cachet/clients/go/client"
	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

var namespaces atomic.Int64

// dial connects in a namespace no other test uses.
func dial(t *testing.T) (*client.Client, context.Context) {
	t.Helper()
	namespace := fmt.Sprintf("go-%d-%d", time.Now().UnixNano(), namespaces.Add(1))
	c, err := client.Dial(serverAddr, namespace)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c, ctx
}

// expectError checks the gRPC status code and the google.rpc.ErrorInfo reason of err.
func expectError(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
	if got := client.Reason(err); got != reason {
		t.Fatalf("want reason %s, got %q (%v)", reason, got, err)
	}
	if domain := client.ErrorInfo(err).GetDomain(); domain != "cachet.dev" {
		t.Fatalf("want ErrorInfo domain cachet.dev, got %q", domain)
	}
}

func TestSetGetDelete(t *testing.T) {
	c, ctx := dial(t)
	version, err := c.Set(ctx, "user:1", []byte("alice"), client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if version == 0 {
		t.Fatal("Set answered version 0")
	}
	value, err := c.Get(ctx, "user:1")
	if err != nil {
		t.Fatal(err)
	}
	if value == nil || !bytes.Equal(value.Data, []byte("alice")) || value.Version != version {
		t.Fatalf("Get answered %+v, want alice at version %d", value, version)
	}
	deleted, err := c.Delete(ctx, "user:1", "never-written")
	if err != nil || deleted != 1 {
		t.Fatalf("Delete answered %d, %v; want 1", deleted, err)
	}
	if value, err := c.Get(ctx, "user:1"); err != nil || value != nil {
		t.Fatalf("Get after Delete answered %+v, %v; want nil, nil", value, err)
	}
}

func TestIncrement(t *testing.T) {
	c, ctx := dial(t)
	for _, want := range []int64{5, 10, 7} {
		by := int64(5)
		if want == 7 {
			by = -3
		}
		got, err := c.Increment(ctx, "hits", by, time.Minute)
		if err != nil || got != want {
			t.Fatalf("Increment(%d) answered %d, %v; want %d", by, got, err, want)
		}
	}
	if _, err := c.Set(ctx, "name", []byte("bob")); err != nil {
		t.Fatal(err)
	}
	_, err := c.Increment(ctx, "name", 1, 0)
	expectError(t, err, codes.FailedPrecondition, "NOT_A_NUMBER")
}

func TestNamespacesAreIsolated(t *testing.T) {
	shop, ctx := dial(t)
	blog, _ := dial(t)
	if _, err := shop.Set(ctx, "k", []byte("shop's")); err != nil {
		t.Fatal(err)
	}
	if value, err := blog.Get(ctx, "k"); err != nil || value != nil {
		t.Fatalf("another namespace read %+v, %v; want nil, nil", value, err)
	}
	// Generated stubs built on Conn() carry the client's namespace as well.
	raw, err := cachev1.NewCacheServiceClient(shop.Conn()).Get(ctx, &cachev1.GetRequest{Key: "k"})
	if err != nil || !raw.GetFound() || string(raw.GetValue()) != "shop's" {
		t.Fatalf("generated stub on Conn() answered %v, %v", raw, err)
	}
}

func TestEmptyKeyIsInvalidArgument(t *testing.T) {
	c, ctx := dial(t)
	_, err := c.Get(ctx, "")
	expectError(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	violations := client.FieldViolations(err)
	if len(violations) != 1 || violations[0].GetField() != "key" {
		t.Fatalf("want one BadRequest violation on field key, got %v", violations)
	}
}

func TestStaleIfVersionIsAborted(t *testing.T) {
	c, ctx := dial(t)
	first, err := c.Set(ctx, "doc", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Set(ctx, "doc", []byte("v2"), client.IfVersion(first))
	if err != nil || second <= first {
		t.Fatalf("compare-and-swap on the current version answered %d, %v", second, err)
	}
	_, err = c.Set(ctx, "doc", []byte("lost update"), client.IfVersion(first))
	expectError(t, err, codes.Aborted, "VERSION_MISMATCH")
	if value, _ := c.Get(ctx, "doc"); value == nil || string(value.Data) != "v2" {
		t.Fatalf("a refused write changed the value: %+v", value)
	}
}

func TestIfAbsentOnExistingKeyFails(t *testing.T) {
	c, ctx := dial(t)
	if _, err := c.Set(ctx, "once", []byte("first"), client.IfAbsent()); err != nil {
		t.Fatal(err)
	}
	_, err := c.Set(ctx, "once", []byte("second"), client.IfAbsent())
	expectError(t, err, codes.FailedPrecondition, "KEY_EXISTS")
}
