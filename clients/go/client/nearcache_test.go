package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cachet-dev/cachet/clients/go/client"
	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// The near-cache against the live server: filled by reads, invalidated by the
// WatchInvalidations stream, serving nothing while unsynced, and never keeping a late
// answer that a newer write invalidated.

var nearNamespaces atomic.Int64

// freshNamespace keeps each test's keys (and its invalidation stream) apart.
func nearNamespace() string {
	return fmt.Sprintf("near%d-%d", time.Now().UnixNano()%1_000_000, nearNamespaces.Add(1))
}

// stubIn is a CacheService stub on a connection to target whose every call (streams
// too) runs in namespace.
func nearStub(t testing.TB, target, namespace string) cachev1.CacheServiceClient {
	t.Helper()
	scope := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "cachet-namespace", namespace)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
		) error {
			return invoker(scope(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc,
			cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption,
		) (grpc.ClientStream, error) {
			return streamer(scope(ctx), desc, cc, method, opts...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cachev1.NewCacheServiceClient(conn)
}

// followed is a near-cache following the stream on its own connection, synced.
func nearFollowed(t testing.TB, stub cachev1.CacheServiceClient, opts client.NearCacheOptions) *client.NearCache {
	t.Helper()
	near, err := client.NewNearCache(stub, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(near.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := near.WaitSynced(ctx); err != nil {
		t.Fatalf("never synced: %v", err)
	}
	return near
}

func nearEventually(t testing.TB, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("not reached within 15 s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nearSet(t testing.TB, stub cachev1.CacheServiceClient, key, value string, ttl time.Duration) {
	t.Helper()
	request := &cachev1.SetRequest{Key: key, Value: []byte(value)}
	if ttl > 0 {
		request.Ttl = durationpb.New(ttl)
	}
	if _, err := stub.Set(context.Background(), request); err != nil {
		t.Fatal(err)
	}
}

// nearSeen waits until near has received invalidations since it had seen before (so a
// read's fill is not dropped afterwards by the late invalidation of an earlier write).
func nearSeen(t testing.TB, near *client.NearCache, before uint64) {
	t.Helper()
	nearEventually(t, "the writes' invalidations arrive", func() bool { return near.Stats().Invalidations > before })
}

func nearData(value *client.Value) string {
	if value == nil {
		return "<absent>"
	}
	return string(value.Data)
}

func TestNearCacheWriteByAnotherClientInvalidates(t *testing.T) {
	namespace := nearNamespace()
	reader, writer := nearStub(t, serverAddr, namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{})
	ctx := context.Background()

	nearSet(t, writer, "user:1", "v1", 0)
	nearSeen(t, near, 0)
	for range 2 {
		value, err := near.Get(ctx, "user:1")
		if err != nil || nearData(value) != "v1" {
			t.Fatalf("Get = %q, %v; want v1", nearData(value), err)
		}
	}
	if stats := near.Stats(); stats.Hits != 1 || stats.Misses != 1 || stats.Entries != 1 || stats.Bytes != 2 {
		t.Fatalf("after a miss and a hit: %+v", stats)
	}

	nearSet(t, writer, "user:1", "v2", 0)
	nearEventually(t, "the write invalidates the near-cached key", func() bool { return near.Stats().Entries == 0 })
	if value, err := near.Get(ctx, "user:1"); err != nil || nearData(value) != "v2" {
		t.Fatalf("after the write: %q, %v; want v2", nearData(value), err)
	}
	if stats := near.Stats(); stats.Invalidations < 2 || stats.Misses != 2 {
		t.Fatalf("counters after the invalidation: %+v", stats)
	}
}

func TestNearCacheGetManyFillsAndServes(t *testing.T) {
	namespace := nearNamespace()
	reader, writer := nearStub(t, serverAddr, namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{})
	ctx := context.Background()
	nearSet(t, writer, "a", "1", 0)
	nearSet(t, writer, "b", "2", 0)
	nearEventually(t, "both writes reported", func() bool { return near.Stats().Invalidations >= 2 })

	keys := []string{"a", "absent", "b", "a"}
	for round := range 2 {
		values, err := near.GetMany(ctx, keys...)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]string, len(values))
		for i, value := range values {
			got[i] = nearData(value)
		}
		if strings.Join(got, ",") != "1,<absent>,2,1" {
			t.Fatalf("round %d: GetMany = %v", round, got)
		}
	}
	// Round 1: three distinct misses; round 2: a and b served (twice for a), absent asked again.
	if stats := near.Stats(); stats.Entries != 2 || stats.Hits != 3 || stats.Misses != 4 {
		t.Fatalf("counters: %+v", stats)
	}
	nearSet(t, writer, "b", "3", 0)
	nearEventually(t, "b invalidated", func() bool { return near.Stats().Entries == 1 })
	values, err := near.GetMany(ctx, "b")
	if err != nil || nearData(values[0]) != "3" {
		t.Fatalf("GetMany after the write: %v, %v", values, err)
	}
}

func TestNearCacheLateAnswerNeverOverwritesNewerInvalidation(t *testing.T) {
	// The classic race, forced: a read starts, another client writes, the invalidation
	// arrives, then the old read's answer arrives. It must not be cached.
	namespace := nearNamespace()
	reader, writer := nearStub(t, serverAddr, namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{})
	ctx := context.Background()
	nearSet(t, writer, "k", "old", 0)
	nearSeen(t, near, 0)

	ticket := near.Begin()
	stale, err := reader.Get(ctx, &cachev1.GetRequest{Key: "k", IncludeTtl: true}) // the read, answered "old"
	if err != nil || string(stale.GetValue()) != "old" {
		t.Fatalf("read: %v, %v", stale, err)
	}
	invalidations := near.Stats().Invalidations
	nearSet(t, writer, "k", "new", 0)
	nearEventually(t, "the invalidation arrives", func() bool { return near.Stats().Invalidations > invalidations })
	old := client.Value{Data: stale.GetValue(), Version: stale.GetVersion()}
	if near.Fill(ticket, "k", old, stale.GetTtl().AsDuration(), stale.GetTtl() != nil) {
		t.Fatal("the late answer was cached over a newer invalidation")
	}
	if _, ok := near.Lookup("k"); ok {
		t.Fatal("the stale value is served")
	}
	if value, err := near.Get(ctx, "k"); err != nil || nearData(value) != "new" {
		t.Fatalf("Get = %q, %v; want new", nearData(value), err)
	}
	if value, ok := near.Lookup("k"); !ok || string(value.Data) != "new" {
		t.Fatalf("the fresh answer is not near-cached: %q, %v", value.Data, ok)
	}
}

func TestNearCacheNothingServedUntilSynced(t *testing.T) {
	near, err := client.NewNearCacheCore(client.NearCacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	value := client.Value{Data: []byte("v"), Version: 1}
	if near.Fill(near.Begin(), "k", value, time.Minute, true) {
		t.Fatal("filled before synced")
	}
	near.Apply(&cachev1.WatchInvalidationsResponse{Event: &cachev1.WatchInvalidationsResponse_Synced{Synced: true}})
	before := near.Begin()
	if !near.Fill(near.Begin(), "k", value, time.Minute, true) {
		t.Fatal("not filled once synced")
	}
	near.Apply(&cachev1.WatchInvalidationsResponse{Event: &cachev1.WatchInvalidationsResponse_FlushAll{FlushAll: true}})
	if _, ok := near.Lookup("k"); ok || near.Synced() {
		t.Fatal("served after flush_all")
	}
	near.Apply(&cachev1.WatchInvalidationsResponse{Event: &cachev1.WatchInvalidationsResponse_Synced{Synced: true}})
	if near.Fill(before, "k", value, time.Minute, true) {
		t.Fatal("a read begun before the flush was kept")
	}
	if _, ok := near.Lookup("k"); ok {
		t.Fatal("served a value from before the flush")
	}
	if stats := near.Stats(); stats.Flushes != 1 || stats.Misses != 2 || stats.Hits != 0 {
		t.Fatalf("counters: %+v", stats)
	}
}

func TestNearCacheRedisConnectionKilledFlushesAndResyncs(t *testing.T) {
	namespace := nearNamespace()
	reader, writer := nearStub(t, serverAddr, namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{})
	ctx := context.Background()
	nearSet(t, writer, "k", "v1", 0)
	nearSeen(t, near, 0)
	if value, err := near.Get(ctx, "k"); err != nil || nearData(value) != "v1" || near.Stats().Entries != 1 {
		t.Fatalf("Get = %q, %v", nearData(value), err)
	}
	ticket := near.Begin()
	flushes := near.Stats().Flushes

	if killed := nearKillRedisClients(t, "cachet-invalidations"); killed == 0 {
		t.Fatal("no cachet-invalidations connection to kill")
	}
	nearEventually(t, "flush_all after the lost tracking connection", func() bool { return near.Stats().Flushes > flushes })
	if near.Stats().Entries != 0 {
		t.Fatal("entries kept across a gap")
	}
	nearEventually(t, "synced again", near.Synced)
	if near.Fill(ticket, "k", client.Value{Data: []byte("v1"), Version: 1}, time.Minute, true) {
		t.Fatal("a read begun before the gap was kept")
	}
	// Tracking is back: a write is reported again.
	if value, err := near.Get(ctx, "k"); err != nil || nearData(value) != "v1" {
		t.Fatalf("Get = %q, %v", nearData(value), err)
	}
	nearSet(t, writer, "k", "v2", 0)
	nearEventually(t, "invalidation after the resync", func() bool { return near.Stats().Entries == 0 })
}

func TestNearCacheStreamLostFlushesAndReconnects(t *testing.T) {
	namespace := nearNamespace()
	proxy := startNearProxy(t, serverAddr)
	reader, writer := nearStub(t, proxy.addr(), namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{MaxBackoff: 200 * time.Millisecond})
	ctx := context.Background()
	nearSet(t, writer, "k", "v1", 0)
	nearSeen(t, near, 0)
	if value, err := near.Get(ctx, "k"); err != nil || nearData(value) != "v1" || near.Stats().Entries != 1 {
		t.Fatalf("Get = %q, %v", nearData(value), err)
	}

	proxy.refuse(true) // the stream breaks and cannot come back for now
	nearEventually(t, "the lost stream flushes the near-cache", func() bool { return !near.Synced() })
	if stats := near.Stats(); stats.Entries != 0 || stats.Flushes < 1 {
		t.Fatalf("after the stream broke: %+v", stats)
	}
	nearSet(t, writer, "k", "v2", 0) // a write the lost stream cannot report
	// Several reopen attempts fail meanwhile (MaxBackoff 200 ms); none may serve.
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, ok := near.Lookup("k"); ok || near.Synced() {
			t.Fatal("served while the stream is lost")
		}
	}

	proxy.refuse(false)
	waitCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := near.WaitSynced(waitCtx); err != nil {
		t.Fatalf("never resynced: %v", err)
	}
	var value *client.Value
	var err error
	nearEventually(t, "reads go through again", func() bool { value, err = near.Get(ctx, "k"); return err == nil })
	if nearData(value) != "v2" {
		t.Fatalf("after reconnecting: %q; want v2", nearData(value))
	}
}

func TestNearCacheBoundedByEntriesAndBytes(t *testing.T) {
	near, err := client.NewNearCacheCore(client.NearCacheOptions{MaxEntries: 3, MaxBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	near.MarkSynced()
	small := client.Value{Data: []byte("x"), Version: 1}
	for _, key := range []string{"a", "b", "c"} {
		near.Fill(near.Begin(), key, small, 0, false)
	}
	near.Lookup("a") // a is now the most recently used: b goes first
	near.Fill(near.Begin(), "d", small, 0, false)
	if kept := nearCachedOf(near, "a", "b", "c", "d"); kept != "a,c,d" {
		t.Fatalf("LRU by entries kept %s", kept)
	}
	near.Fill(near.Begin(), "big", client.Value{Data: []byte("yyyyyyyyy")}, 0, false) // 9 bytes
	if stats := near.Stats(); stats.Bytes > 10 || stats.Entries != 2 {
		t.Fatalf("LRU by bytes: %+v", stats)
	}
	if kept := nearCachedOf(near, "big"); kept != "big" {
		t.Fatal("the newest entry was evicted")
	}
	if near.Fill(near.Begin(), "huge", client.Value{Data: []byte("hhhhhhhhhhh")}, 0, false) {
		t.Fatal("a value larger than the cache was kept")
	}
	if stats := near.Stats(); stats.Evictions != 3 {
		t.Fatalf("evictions: %+v", stats)
	}
}

func nearCachedOf(near *client.NearCache, keys ...string) string {
	var kept []string
	for _, key := range keys {
		if _, ok := near.Lookup(key); ok {
			kept = append(kept, key)
		}
	}
	return strings.Join(kept, ",")
}

func TestNearCacheTTLNeverPastTheServers(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	namespace := nearNamespace()
	reader, writer := nearStub(t, serverAddr, namespace), nearStub(t, serverAddr, namespace)
	near := nearFollowed(t, reader, client.NearCacheOptions{MaxTTL: time.Hour, Clock: clock})
	ctx := context.Background()
	nearSet(t, writer, "short", "s", 30*time.Second)
	nearSet(t, writer, "long", "l", time.Hour)
	nearEventually(t, "both writes reported", func() bool { return near.Stats().Invalidations >= 2 })
	if _, err := near.GetMany(ctx, "short", "long"); err != nil {
		t.Fatal(err)
	}
	advance(30 * time.Second) // the server's copy of "short" expires now (its real clock lags)
	if kept := nearCachedOf(near, "short", "long"); kept != "long" {
		t.Fatalf("after the server's TTL: %s kept", kept)
	}

	capped, err := client.NewNearCacheCore(client.NearCacheOptions{MaxTTL: 5 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	capped.MarkSynced()
	capped.Fill(capped.Begin(), "untimed", client.Value{Data: []byte("u")}, 0, false)
	capped.Fill(capped.Begin(), "timed", client.Value{Data: []byte("t")}, time.Hour, true)
	advance(5 * time.Second)
	if kept := nearCachedOf(capped, "untimed", "timed"); kept != "" {
		t.Fatalf("past MaxTTL: %s kept", kept)
	}
	if capped.Fill(capped.Begin(), "expired", client.Value{Data: []byte("e")}, 0, true) {
		t.Fatal("an answer with no TTL left was kept")
	}
}

// killRedisClients closes the test Redis's connections named name; it answers how many.
func nearKillRedisClients(t testing.TB, name string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", redisAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	replies := bufio.NewReader(conn)
	list, err := nearRedisCall(conn, replies, "CLIENT", "LIST")
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		fields := map[string]string{}
		for _, field := range strings.Fields(line) {
			if k, v, ok := strings.Cut(field, "="); ok {
				fields[k] = v
			}
		}
		if fields["name"] == name {
			if _, err := nearRedisCall(conn, replies, "CLIENT", "KILL", "ID", fields["id"]); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	return killed
}

// redisCall sends one command and reads a simple, integer or bulk string reply.
func nearRedisCall(conn net.Conn, replies *bufio.Reader, args ...string) (string, error) {
	command := fmt.Sprintf("*%d\r\n", len(args))
	for _, arg := range args {
		command += fmt.Sprintf("$%d\r\n%s\r\n", len(arg), arg)
	}
	if _, err := io.WriteString(conn, command); err != nil {
		return "", err
	}
	line, err := replies.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '$':
		size, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		body := make([]byte, size+2)
		_, err = io.ReadFull(replies, body)
		return string(body[:size]), err
	default:
		return "", fmt.Errorf("redis: %s", line)
	}
}

// proxy forwards loopback TCP to a target; refuse(true) cuts every connection and
// turns new ones away until refuse(false).
type nearProxy struct {
	listener net.Listener
	mu       sync.Mutex
	refusing bool
	open     map[net.Conn]struct{}
}

func startNearProxy(t testing.TB, target string) *nearProxy {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &nearProxy{listener: listener, open: map[net.Conn]struct{}{}}
	t.Cleanup(func() { listener.Close(); p.refuse(true) })
	go func() {
		for {
			downstream, err := listener.Accept()
			if err != nil {
				return
			}
			upstream, err := net.Dial("tcp", target)
			if err != nil {
				downstream.Close()
				continue
			}
			p.mu.Lock()
			if p.refusing {
				downstream.Close()
				upstream.Close()
			} else {
				p.open[downstream], p.open[upstream] = struct{}{}, struct{}{}
				go nearPipe(downstream, upstream)
				go nearPipe(upstream, downstream)
			}
			p.mu.Unlock()
		}
	}()
	return p
}

func nearPipe(to, from net.Conn) {
	_, _ = io.Copy(to, from)
	to.Close()
	from.Close()
}

func (p *nearProxy) addr() string { return p.listener.Addr().String() }

func (p *nearProxy) refuse(refusing bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusing = refusing
	if refusing {
		for conn := range p.open {
			conn.Close()
		}
		clear(p.open)
	}
}

// Benchmarks against the live server (not run by `go test ./...`; run them with
// `go test -run '^$' -bench NearCache ./client/`).

func BenchmarkNearCacheHit(b *testing.B) {
	near, _ := nearBenchSetup(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if value, err := near.Get(ctx, "hot"); err != nil || value == nil {
			b.Fatal("not a hit", err)
		}
	}
	b.StopTimer()
	if stats := near.Stats(); stats.Misses > 1 {
		b.Fatalf("hits were misses: %+v", stats)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hits/s")
}

func BenchmarkNearCacheHitParallel(b *testing.B) {
	near, _ := nearBenchSetup(b)
	ctx := context.Background()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if value, err := near.Get(ctx, "hot"); err != nil || value == nil {
				b.Error("not a hit", err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hits/s")
}

func BenchmarkNearCacheUnaryGet(b *testing.B) {
	_, stub := nearBenchSetup(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if reply, err := stub.Get(ctx, &cachev1.GetRequest{Key: "hot"}); err != nil || !reply.GetFound() {
			b.Fatal("Get", err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gets/s")
}

// BenchmarkNearCacheInvalidationDelay: from a write's acknowledgement to its key
// arriving on another connection's stream (p50-ms, p99-ms, max-ms).
func BenchmarkNearCacheInvalidationDelay(b *testing.B) {
	namespace := nearNamespace()
	watcher, writer := nearStub(b, serverAddr, namespace), nearStub(b, serverAddr, namespace)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := watcher.WatchInvalidations(ctx, &cachev1.WatchInvalidationsRequest{})
	if err != nil {
		b.Fatal(err)
	}
	if event, err := stream.Recv(); err != nil || !event.GetSynced() {
		b.Fatalf("first event %v, %v", event, err)
	}
	received := make(chan time.Time, 1024)
	go func() {
		for {
			event, err := stream.Recv()
			if err != nil {
				close(received)
				return
			}
			now := time.Now()
			for range event.GetKeys().GetKeys() {
				received <- now
			}
		}
	}()
	delays := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		if _, err := writer.Set(ctx, &cachev1.SetRequest{Key: fmt.Sprintf("d%d", i), Value: []byte("1")}); err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		at, ok := <-received
		if !ok {
			b.Fatal("the stream ended")
		}
		delays = append(delays, max(0, at.Sub(acked)))
	}
	b.StopTimer()
	slices.Sort(delays)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(delays[len(delays)/2]), "p50-ms")
	b.ReportMetric(ms(delays[min(len(delays)-1, len(delays)*99/100)]), "p99-ms")
	b.ReportMetric(ms(delays[len(delays)-1]), "max-ms")
}

// nearBenchSetup writes a 100-byte "hot" key and near-caches it.
func nearBenchSetup(b *testing.B) (*client.NearCache, cachev1.CacheServiceClient) {
	namespace := nearNamespace()
	stub := nearStub(b, serverAddr, namespace)
	near := nearFollowed(b, stub, client.NearCacheOptions{})
	nearSet(b, stub, "hot", strings.Repeat("x", 100), 0)
	nearSeen(b, near, 0)
	if value, err := near.Get(context.Background(), "hot"); err != nil || value == nil {
		b.Fatal("hot", err)
	}
	return near, stub
}

func TestClientWithNearCacheServesGetAndGetManyLocally(t *testing.T) {
	namespace := nearNamespace()
	c, err := client.Dial(serverAddr, namespace)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.EnableNearCache(client.NearCacheOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.EnableNearCache(client.NearCacheOptions{}); err == nil {
		t.Fatal("a second EnableNearCache must be refused")
	}
	ctx := context.Background()
	if err := c.NearCache().WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	writer := nearStub(t, serverAddr, namespace)
	nearSet(t, writer, "k", "v1", 0)
	nearSeen(t, c.NearCache(), 0)
	for range 3 {
		if value, err := c.Get(ctx, "k"); err != nil || nearData(value) != "v1" {
			t.Fatalf("Get = %q, %v", nearData(value), err)
		}
	}
	values, err := c.GetMany(ctx, "k", "absent")
	if err != nil || nearData(values[0]) != "v1" || values[1] != nil {
		t.Fatalf("GetMany = %v, %v", values, err)
	}
	if stats := c.NearCache().Stats(); stats.Hits < 3 {
		t.Fatalf("Get and GetMany were not served locally: %+v", stats)
	}
	seen := c.NearCache().Stats().Invalidations
	nearSet(t, writer, "k", "v2", 0)
	nearSeen(t, c.NearCache(), seen)
	if value, err := c.Get(ctx, "k"); err != nil || nearData(value) != "v2" {
		t.Fatalf("after another client's write: %q, %v", nearData(value), err)
	}
	if _, err := c.Get(ctx, ""); !errors.As(err, new(*client.Error)) {
		t.Fatalf("errors through the near-cache are typed: %v", err)
	}
}
