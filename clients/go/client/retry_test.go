package client_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/cachet-dev/cachet/clients/go/client"
)

// attempts counts the RPC attempts grpc-go makes per method (a retry is a new attempt).
type attempts struct {
	mu     sync.Mutex
	counts map[string]int
}

type methodKey struct{}

func (a *attempts) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (a *attempts) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if begin, ok := s.(*stats.Begin); ok && !begin.IsTransparentRetryAttempt {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.counts[ctx.Value(methodKey{}).(string)]++
	}
}

func (a *attempts) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (a *attempts) HandleConn(context.Context, stats.ConnStats)                       {}

func (a *attempts) of(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[method]
}

// With Redis gone the server answers UNAVAILABLE: the service config retries an
// idempotent Get and an Increment that carries a request_id (4 attempts each), and
// never a Set. Before that, a quota refusal shows as ErrRateLimited.
func TestUnavailableRetriesOnlyIdempotentCalls(t *testing.T) {
	server, err := startTestServer("CACHET_QUOTAS__MAX_HOLD_STREAMS=1")
	if err != nil {
		t.Fatal(err)
	}
	defer server.stop()
	counter := &attempts{counts: map[string]int{}}
	c, err := client.Dial(server.addr, "go-retry", grpc.WithStatsHandler(counter))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// A namespace's quota (here one Hold stream) answers RESOURCE_EXHAUSTED with a
	// RetryInfo: ErrRateLimited, with RetryAfter, and not retried.
	held := must(c.Locks().Hold(ctx, "a", 10*time.Second, client.LockOptions{}))(t)
	_, err = c.Locks().Hold(ctx, "b", 10*time.Second, client.LockOptions{})
	var quota *client.Error
	if !errors.Is(err, client.ErrRateLimited) || !errors.As(err, &quota) || quota.RetryAfter <= 0 || quota.Reason != "QUOTA_EXCEEDED" {
		t.Fatalf("a second Hold over the quota answered %v", err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	server.stopRedis()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Get without Redis answered %v", err)
	}
	if _, err := c.Set(ctx, "k", []byte("v")); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Set without Redis answered %v", err)
	}
	if _, err := c.Increment(ctx, "n", 1, 0); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Increment without Redis answered %v", err)
	}
	if got := counter.of("/cachet.cache.v1.CacheService/Get"); got != 1+4 {
		t.Fatalf("Get made %d attempts, want 1 before and 4 after Redis stopped", got)
	}
	if got := counter.of("/cachet.cache.v1.CacheService/Set"); got != 1 {
		t.Fatalf("Set made %d attempts, want 1: it is not idempotent", got)
	}
	if got := counter.of("/cachet.cache.v1.CacheService/Increment"); got != 4 {
		t.Fatalf("Increment made %d attempts, want 4: its request_id makes it safe to retry", got)
	}
}
