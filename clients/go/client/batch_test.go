package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"github.com/cachet-dev/cachet/clients/go/client"
	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// Batch, Session and Batcher against the live server. RPCs are counted by a grpc-go
// stats handler on the client's connection (what really went on the wire), never by the
// wrappers' own bookkeeping.

const (
	batchMethod   = "/cachet.cache.v1.CacheService/Batch"
	sessionMethod = "/cachet.cache.v1.CacheService/Session"
)

// rpcCounter counts, per method, the RPCs begun and the messages sent; of Session
// streams, also the operations those messages carried.
type rpcCounter struct {
	mu    sync.Mutex
	begun map[string]int
	sent  map[string]int

	sessionOperations int                         // in every Session message sent
	largestPack       int                         // the most operations one Session message carried
	lastSession       *cachev1.SessionRequest     // the last Session message sent
	keepPacks         bool                        // set before the Session is used: keep packs
	packs             [][]*cachev1.BatchOperation // the operations of each packed message, when kept
}

type rpcMethodKey struct{}

func (r *rpcCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcMethodKey{}, info.FullMethodName)
}

func (r *rpcCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	method, _ := ctx.Value(rpcMethodKey{}).(string)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch s := s.(type) {
	case *stats.Begin:
		if !s.IsTransparentRetryAttempt {
			r.begun[method]++
		}
	case *stats.OutPayload:
		r.sent[method]++
		if request, ok := s.Payload.(*cachev1.SessionRequest); ok {
			r.countSession(request)
		}
	}
}

func (r *rpcCounter) countSession(request *cachev1.SessionRequest) {
	operations := len(request.GetOperations())
	if request.GetOperation() != nil {
		operations++
	}
	r.sessionOperations += operations
	r.largestPack = max(r.largestPack, operations)
	r.lastSession = request
	if r.keepPacks && len(request.GetOperations()) > 1 {
		pack := make([]*cachev1.BatchOperation, 0, len(request.GetOperations()))
		for _, packed := range request.GetOperations() {
			pack = append(pack, packed.GetOperation())
		}
		r.packs = append(r.packs, pack)
	}
}

func (r *rpcCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (r *rpcCounter) HandleConn(context.Context, stats.ConnStats)                       {}

func (r *rpcCounter) calls(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.begun[method]
}

func (r *rpcCounter) messages(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent[method]
}

// sessionSent is how many Session messages were sent and how many operations they
// carried.
func (r *rpcCounter) sessionSent() (messages, operations int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent[sessionMethod], r.sessionOperations
}

// packedAnyOf reports whether a kept pack (keepPacks) carried an operation that is.
func (r *rpcCounter) packedAnyOf(is func(*cachev1.BatchOperation) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pack := range r.packs {
		for _, operation := range pack {
			if is(operation) {
				return true
			}
		}
	}
	return false
}

// dialCounted connects to addr in a fresh namespace, counting the RPCs it makes.
func dialCounted(t *testing.T, addr string, opts ...grpc.DialOption) (*client.Client, *rpcCounter, context.Context) {
	t.Helper()
	counter := &rpcCounter{begun: map[string]int{}, sent: map[string]int{}}
	namespace := fmt.Sprintf("go-batch-%d-%d", time.Now().UnixNano(), namespaces.Add(1))
	c := must(client.Dial(addr, namespace, append(opts, grpc.WithStatsHandler(counter))...))(t)
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c, counter, ctx
}

// sameError checks that a batched operation's error is the unary call's: the same
// code, reason, message, metadata and ErrorInfo domain.
func sameError(t *testing.T, what string, batched, unary error) {
	t.Helper()
	var b, u *client.Error
	if !errors.As(batched, &b) || !errors.As(unary, &u) {
		t.Fatalf("%s: want two *client.Error, got %T %v and %T %v", what, batched, batched, unary, unary)
	}
	if b.Code != u.Code || b.Reason != u.Reason || b.Message != u.Message || !maps.Equal(b.Metadata, u.Metadata) ||
		client.ErrorInfo(batched).GetDomain() != client.ErrorInfo(unary).GetDomain() {
		t.Fatalf("%s: batched %+v differs from unary %+v", what, b, u)
	}
}

func TestBatchRunsEveryKindOfOperation(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	must(c.Set(ctx, "doc", []byte("old")))(t)
	must(c.HashSet(ctx, "h", []client.Field{{Name: "a", Value: []byte("1")}}, false, client.CollectionTTL{}))(t)

	b := c.Batch()
	set := b.Set("user:1", []byte("alice"), client.WithTTL(time.Minute))
	get := b.Get("user:1")
	absent := b.Get("never-written")
	hits := b.Increment("hits", 5, time.Minute)
	score := b.IncrementFloat("score", 1.5, 0)
	expire := b.Expire("user:1", time.Hour)
	expireAbsent := b.Expire("never-written", time.Hour)
	hashSet := b.HashSet("h", []client.Field{{Name: "b", Value: []byte("2")}, {Name: "a", Value: []byte("1b")}}, false, client.CollectionTTL{})
	hashGet := b.HashGet("h", "a", "b", "c")
	deleted := b.Delete("doc", "never-written")
	results, err := b.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != b.Len() || b.Len() != 10 {
		t.Fatalf("%d results for %d operations", len(results), b.Len())
	}
	for i, result := range results {
		if result.Err != nil {
			t.Fatalf("operation %d failed: %v", i, result.Err)
		}
	}
	version := must(set.Result())(t)
	if value := must(get.Result())(t); value == nil || string(value.Data) != "alice" || value.Version != version || version == 0 {
		t.Fatalf("the get after the set read %+v, want alice at version %d", value, version)
	}
	if value, err := absent.Result(); value != nil || err != nil || results[2].Value != nil {
		t.Fatalf("an absent key answered %+v, %v (result %#v); want nil, nil", value, err, results[2].Value)
	}
	if n := must(hits.Result())(t); n != 5 || results[3].Value != int64(5) {
		t.Fatalf("Increment answered %d", n)
	}
	if f := must(score.Result())(t); f != 1.5 {
		t.Fatalf("IncrementFloat answered %v", f)
	}
	if !must(expire.Result())(t) || must(expireAbsent.Result())(t) {
		t.Fatal("Expire answered found wrong")
	}
	if added := must(hashSet.Result())(t); added != 1 {
		t.Fatalf("HashSet added %d, want 1 (field a existed)", added)
	}
	if values := must(hashGet.Result())(t); len(values) != 3 || string(values[0]) != "1b" || string(values[1]) != "2" || values[2] != nil {
		t.Fatalf("HashGet answered %q", values)
	}
	if n := must(deleted.Result())(t); n != 1 {
		t.Fatalf("Delete answered %d, want 1", n)
	}
	// What the batch wrote is there for the unary calls.
	if ttl, found := must2(c.TTL(ctx, "user:1"))(t); !found || ttl < 59*time.Minute {
		t.Fatalf("the batched Expire left TTL %v, found %v", ttl, found)
	}
	if value := must(c.Get(ctx, "doc"))(t); value != nil {
		t.Fatalf("the batched Delete left %+v", value)
	}
	if got := counter.calls(batchMethod); got != 1 {
		t.Fatalf("one Exec made %d Batch RPCs", got)
	}
}

func TestBatchOperationsFailAlone(t *testing.T) {
	c, _, ctx := dialCounted(t, serverAddr)
	first := must(c.Set(ctx, "doc", []byte("v1")))(t)
	must(c.Set(ctx, "name", []byte("bob")))(t)

	b := c.Batch()
	before := b.Set("fine", []byte("x"))
	emptyKey := b.Get("")
	tagged := b.Set("tagged", []byte("x"), client.WithTags("t"))
	stale := b.Set("doc", []byte("lost update"), client.IfVersion(first+1))
	notANumber := b.Increment("name", 1, 0)
	missing := b.Set("missing", []byte("x"), client.IfPresent())
	after := b.Get("fine")
	if _, err := b.Exec(ctx); err != nil {
		t.Fatalf("failed operations failed the call: %v", err)
	}
	if must(before.Result())(t) == 0 {
		t.Fatal("the set before the failures answered version 0")
	}
	if value := must(after.Result())(t); value == nil || string(value.Data) != "x" {
		t.Fatalf("the get after the failures read %+v", value)
	}

	_, err := emptyKey.Result()
	expectError(t, err, codes.InvalidArgument, "INVALID_ARGUMENT")
	_, unary := c.Get(ctx, "")
	sameError(t, "empty key", err, unary)

	_, err = tagged.Result()
	if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "tags") {
		t.Fatalf("a batched Set with tags answered %v", err)
	}
	if value := must(c.Get(ctx, "tagged"))(t); value != nil {
		t.Fatalf("a refused tagged Set wrote %+v", value)
	}

	_, err = stale.Result()
	var cerr *client.Error
	if !errors.Is(err, client.ErrVersionMismatch) || !errors.As(err, &cerr) || cerr.Metadata["current_version"] != strconv.FormatUint(first, 10) {
		t.Fatalf("a stale IfVersion answered %v", err)
	}
	expectError(t, err, codes.Aborted, "VERSION_MISMATCH")
	_, unary = c.Set(ctx, "doc", []byte("lost update"), client.IfVersion(first+1))
	sameError(t, "stale version", err, unary)

	_, err = notANumber.Result()
	_, unary = c.Increment(ctx, "name", 1, 0)
	if !errors.Is(err, client.ErrNotANumber) {
		t.Fatalf("an increment of a string answered %v", err)
	}
	sameError(t, "not a number", err, unary)

	_, err = missing.Result()
	_, unary = c.Set(ctx, "missing", []byte("x"), client.IfPresent())
	if !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("IfPresent on a missing key answered %v", err)
	}
	sameError(t, "if present", err, unary)

	// The call's own errors: no operations, and a deadline already passed.
	if _, err := c.Batch().Exec(ctx); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("an empty batch answered %v", err)
	}
	expired, cancel := context.WithTimeout(ctx, -time.Second)
	defer cancel()
	late := c.Batch()
	op := late.Get("fine")
	results, err := late.Exec(expired)
	if !errors.Is(err, context.DeadlineExceeded) || len(results) != 1 || !errors.Is(results[0].Err, context.DeadlineExceeded) {
		t.Fatalf("a batch past its deadline answered %v, %v", results, err)
	}
	if _, err := op.Result(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("its operation answered %v", err)
	}
	if _, err := c.Batch().Get("k").Result(); err == nil {
		t.Fatal("an operation of a batch never executed answered no error")
	}
}

func TestBatchSplitsAboveMaxBatchInOrder(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	n := 2*client.DefaultMaxBatch + 345
	key := func(i int) string { return "k" + strconv.Itoa(i) }
	writes := c.Batch()
	sets := make([]client.BatchOp[uint64], n)
	for i := range n {
		sets[i] = writes.Set(key(i), []byte("value-"+strconv.Itoa(i)))
	}
	if _, err := writes.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	reads := c.Batch()
	gets := make([]client.BatchOp[*client.Value], n)
	for i := range n {
		gets[i] = reads.Get(key(i))
	}
	results, err := reads.Exec(ctx)
	if err != nil || len(results) != n {
		t.Fatalf("%d results, %v", len(results), err)
	}
	for i := range n {
		version := must(sets[i].Result())(t)
		value := must(gets[i].Result())(t)
		if value == nil || string(value.Data) != "value-"+strconv.Itoa(i) || value.Version != version {
			t.Fatalf("operation %d read %+v, want value-%d at version %d", i, value, i, version)
		}
	}
	if got := counter.calls(batchMethod); got != 6 {
		t.Fatalf("two batches of %d operations made %d Batch RPCs, want 3 each", n, got)
	}
	// A lower max batch (a server with a lower CACHET_LIMITS__MAX_BATCH) splits further.
	small := c.Batch().MaxBatch(4)
	for i := range 10 {
		small.Get(key(i))
	}
	results = must(small.Exec(ctx))(t)
	for i, result := range results {
		if value := result.Value.(*client.Value); string(value.Data) != "value-"+strconv.Itoa(i) {
			t.Fatalf("result %d of the small batches read %q", i, value.Data)
		}
	}
	if got := counter.calls(batchMethod); got != 6+3 {
		t.Fatalf("10 operations 4 at a time made %d Batch RPCs, want 3", got-6)
	}
}

// 40 sets of 300 kB are 12 MB: as one Batch RPC, over the server's 8 MiB message size,
// every one of them failed (RESOURCE_EXHAUSTED). Exec cuts the batch at a MiB of
// operations: three sets an RPC, 14 RPCs at once; a set of the server's largest value
// (1 MiB) goes in an RPC of its own.
func TestBatchSplitsBigValuesAtAMiB(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	key := func(i int) string { return "big:" + strconv.Itoa(i) }
	value := func(i int) []byte { return bytes.Repeat([]byte{byte('A' + i%26)}, 300_000) }
	writes := c.Batch()
	sets := make([]client.BatchOp[uint64], 40)
	for i := range sets {
		sets[i] = writes.Set(key(i), value(i))
	}
	if _, err := writes.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counter.calls(batchMethod); got != 14 {
		t.Fatalf("40 sets of 300 kB made %d Batch RPCs, want 14 (three a MiB)", got)
	}
	for i := range sets {
		version := must(sets[i].Result())(t)
		if got := must(c.Get(ctx, key(i)))(t); got == nil || !bytes.Equal(got.Data, value(i)) || got.Version != version {
			t.Fatalf("%s did not read back what its set wrote", key(i))
		}
	}

	values := map[string][]byte{"before": []byte("1"), "largest": bytes.Repeat([]byte("L"), 1<<20), "after": []byte("2")}
	mixed := c.Batch()
	for _, k := range []string{"before", "largest", "after"} {
		mixed.Set(k, values[k])
	}
	if _, err := mixed.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counter.calls(batchMethod) - 14; got != 3 {
		t.Fatalf("a 1 MiB set between two small ones made %d Batch RPCs, want 3", got)
	}
	for k, want := range values {
		if got := must(c.Get(ctx, k))(t); got == nil || !bytes.Equal(got.Data, want) {
			t.Fatalf("%s did not read back what its set wrote", k)
		}
	}
}

func TestSessionAnswersEveryCallerItsOwn(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	seed := c.Batch()
	for i := range 100 {
		seed.Set("shared:"+strconv.Itoa(i), []byte("shared-"+strconv.Itoa(i)))
	}
	must(seed.Exec(ctx))(t)

	s := c.Session(ctx)
	defer func() {
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close answered %v", err)
		}
	}()
	const goroutines, each = 25, 12 // 300 operations, and a read-back of each Set
	failures := make(chan error, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			fail := func(format string, args ...any) {
				failures <- fmt.Errorf("goroutine %d: "+format, append([]any{g}, args...)...)
			}
			var sum int64
			for j := range each {
				i := g*each + j
				switch i % 4 {
				case 0:
					value, err := s.Get(ctx, "shared:"+strconv.Itoa(i%100))
					if err != nil || value == nil || string(value.Data) != "shared-"+strconv.Itoa(i%100) {
						fail("Get shared:%d answered %+v, %v", i%100, value, err)
					}
				case 1:
					sum += int64(i)
					n, err := s.Increment(ctx, "counter:"+strconv.Itoa(g), int64(i), time.Minute)
					if err != nil || n != sum {
						fail("Increment answered %d, %v; want %d", n, err, sum)
					}
				case 2:
					own := "own:" + strconv.Itoa(i)
					version, err := s.Set(ctx, own, []byte("mine-"+strconv.Itoa(i)))
					value, readErr := s.Get(ctx, own)
					if err != nil || readErr != nil || value == nil || string(value.Data) != "mine-"+strconv.Itoa(i) || value.Version != version {
						fail("Set then Get of %s answered %d %v, %+v %v", own, version, err, value, readErr)
					}
				case 3:
					hash := "hash:" + strconv.Itoa(i)
					added, err := s.HashSet(ctx, hash, []client.Field{{Name: "f", Value: []byte(strconv.Itoa(i))}}, false, client.CollectionTTL{})
					values, readErr := s.HashGet(ctx, hash, "f", "g")
					if err != nil || readErr != nil || added != 1 || len(values) != 2 || string(values[0]) != strconv.Itoa(i) || values[1] != nil {
						fail("HashSet then HashGet of %s answered %d %v, %q %v", hash, added, err, values, readErr)
					}
				}
			}
		})
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}

	// A failed operation fails alone; the stream goes on.
	_, err := s.Get(ctx, "")
	_, unary := c.Get(ctx, "")
	sameError(t, "empty key on a session", err, unary)
	version := must(c.Set(ctx, "doc", []byte("v1")))(t)
	_, err = s.Set(ctx, "doc", []byte("v2"), client.IfVersion(version+1))
	_, unary = c.Set(ctx, "doc", []byte("v2"), client.IfVersion(version+1))
	if !errors.Is(err, client.ErrVersionMismatch) {
		t.Fatalf("a stale IfVersion on a session answered %v", err)
	}
	sameError(t, "stale version on a session", err, unary)
	if deleted := must(s.Delete(ctx, "doc", "never-written"))(t); deleted != 1 {
		t.Fatalf("Delete on the session answered %d", deleted)
	}
	if found := must(s.Expire(ctx, "shared:1", time.Hour))(t); !found {
		t.Fatal("Expire on the session did not find the key")
	}
	if f := must(s.IncrementFloat(ctx, "float", 0.25, 0))(t); f != 0.25 {
		t.Fatalf("IncrementFloat on the session answered %v", f)
	}
	// An operation whose ctx has ended fails alone too.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(cancelled, "shared:1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("an operation with a cancelled ctx answered %v", err)
	}
	if value := must(s.Get(ctx, "shared:2"))(t); value == nil || string(value.Data) != "shared-2" {
		t.Fatalf("the session after the failures read %+v", value)
	}
	if streams := counter.calls(sessionMethod); streams != 1 {
		t.Fatalf("the session opened %d streams, want 1", streams)
	}
	if calls := counter.calls(batchMethod); calls != 1 {
		t.Fatalf("the session's operations made %d Batch calls besides the seed", calls-1)
	}
}

// issueAtOnce runs op(0) ... op(n-1) each on its own goroutine, all released together,
// and reports every error.
func issueAtOnce(t *testing.T, n int, op func(i int) error) {
	t.Helper()
	start := make(chan struct{})
	failures := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			if err := op(i); err != nil {
				failures <- fmt.Errorf("operation %d: %w", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
}

// Operations issued at once on one Session go out packed, counted on the wire by the
// stats handler: fewer messages than operations, none with more than 256,
// and every caller gets its own answer. A lone operation on the idle stream then goes
// alone, in the single id/operation shape.
func TestSessionPacksOperationsIssuedAtOnce(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	s := c.Session(ctx)
	defer func() {
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close answered %v", err)
		}
	}()
	const n = 600 // more than one message's 256 may wait at once
	key := func(i int) string { return "packed:" + strconv.Itoa(i) }
	data := func(i int) []byte { return []byte("value-" + strconv.Itoa(i)) }
	versions := make([]uint64, n)
	burst := func(what string, op func(i int) error) {
		t.Helper()
		messagesBefore, operationsBefore := counter.sessionSent()
		issueAtOnce(t, n, op)
		messages, operations := counter.sessionSent()
		messages, operations = messages-messagesBefore, operations-operationsBefore
		if operations != n {
			t.Fatalf("%d %ss went as %d operations on the wire", n, what, operations)
		}
		if messages >= operations {
			t.Fatalf("%d %ss issued at once went in %d messages: none packed", n, what, messages)
		}
		t.Logf("%d %ss issued at once went in %d Session messages", n, what, messages)
	}
	burst("Set", func(i int) error {
		version, err := s.Set(ctx, key(i), data(i))
		if err == nil && version == 0 {
			err = errors.New("version 0")
		}
		versions[i] = version
		return err
	})
	burst("Get", func(i int) error {
		value, err := s.Get(ctx, key(i))
		if err == nil && (value == nil || !bytes.Equal(value.Data, data(i)) || value.Version != versions[i]) {
			err = fmt.Errorf("read %+v, want %q at version %d", value, data(i), versions[i])
		}
		return err
	})
	counter.mu.Lock()
	largest := counter.largestPack
	counter.mu.Unlock()
	if largest < 2 || largest > 256 { // the client's cap per message
		t.Fatalf("the largest Session message carried %d operations, want 2 to 256", largest)
	}
	t.Logf("the largest Session message carried %d operations", largest)
	for _, i := range []int{0, n / 2, n - 1} { // what the session wrote, read by unary calls
		if value := must(c.Get(ctx, key(i)))(t); value == nil || !bytes.Equal(value.Data, data(i)) || value.Version != versions[i] {
			t.Fatalf("a unary Get of %s read %+v", key(i), value)
		}
	}

	messagesBefore, _ := counter.sessionSent()
	if value := must(s.Get(ctx, key(7)))(t); value == nil || !bytes.Equal(value.Data, data(7)) {
		t.Fatalf("a lone Get read %+v", value)
	}
	counter.mu.Lock()
	last := counter.lastSession
	messages := counter.sent[sessionMethod] - messagesBefore
	counter.mu.Unlock()
	if messages != 1 || last.GetOperation().GetGet().GetKey() != key(7) || len(last.GetOperations()) != 0 {
		t.Fatalf("a lone Get went in %d messages, the last %v; want one, in id and operation", messages, last)
	}
	if streams := counter.calls(sessionMethod); streams != 1 {
		t.Fatalf("the session opened %d streams, want 1", streams)
	}
}

// 30 sets of 300 kB issued at once would be one 9 MB message, over the server's 8 MiB:
// the client packs what fits in a MiB (three) and carries the next over.
func TestSessionPacksAMiBPerMessageAtMost(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	s := c.Session(ctx)
	defer func() { _ = s.Close(ctx) }()
	value := bytes.Repeat([]byte("v"), 300_000)
	issueAtOnce(t, 30, func(i int) error {
		_, err := s.Set(ctx, "big:"+strconv.Itoa(i), value)
		return err
	})
	for _, i := range []int{0, 29} {
		if got := must(s.Get(ctx, "big:"+strconv.Itoa(i)))(t); got == nil || !bytes.Equal(got.Data, value) {
			t.Fatalf("big:%d read back wrong", i)
		}
	}
	counter.mu.Lock()
	largest := counter.largestPack
	counter.mu.Unlock()
	if largest > 3 {
		t.Fatalf("a Session message carried %d sets of 300 kB, past a MiB", largest)
	}
}

// An operation that fails inside a packed message fails alone, with the unary call's
// error; the others of its message answer theirs.
func TestSessionPackedOperationFailsAlone(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	counter.keepPacks = true
	first := must(c.Set(ctx, "doc", []byte("v1")))(t)
	must(c.Set(ctx, "name", []byte("bob")))(t)
	_, emptyKey := c.Get(ctx, "")
	_, stale := c.Set(ctx, "doc", []byte("lost update"), client.IfVersion(first+1))
	_, notANumber := c.Increment(ctx, "name", 1, 0)
	s := c.Session(ctx)
	defer func() {
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close answered %v", err)
		}
	}()
	const n = 300 // every tenth fails, one of three ways
	key := func(i int) string { return "fine:" + strconv.Itoa(i) }
	var mu sync.Mutex
	failed := map[int]error{}
	issueAtOnce(t, n, func(i int) error {
		if i%10 != 0 {
			version, err := s.Set(ctx, key(i), []byte(strconv.Itoa(i)))
			if err == nil && version == 0 {
				err = errors.New("version 0")
			}
			return err
		}
		var err error
		switch i / 10 % 3 {
		case 0:
			_, err = s.Get(ctx, "")
		case 1:
			_, err = s.Set(ctx, "doc", []byte("lost update"), client.IfVersion(first+1))
		case 2:
			_, err = s.Increment(ctx, "name", 1, 0)
		}
		mu.Lock()
		failed[i] = err
		mu.Unlock()
		return nil
	})
	for i, err := range failed {
		switch i / 10 % 3 {
		case 0:
			sameError(t, "empty key in a packed message", err, emptyKey)
		case 1:
			if !errors.Is(err, client.ErrVersionMismatch) {
				t.Fatalf("a stale IfVersion in a packed message answered %v", err)
			}
			sameError(t, "stale version in a packed message", err, stale)
		case 2:
			if !errors.Is(err, client.ErrNotANumber) {
				t.Fatalf("an increment of a string in a packed message answered %v", err)
			}
			sameError(t, "not a number in a packed message", err, notANumber)
		}
	}
	if len(failed) != n/10 {
		t.Fatalf("%d failing operations answered, want %d", len(failed), n/10)
	}
	failing := func(operation *cachev1.BatchOperation) bool {
		return operation.GetGet() != nil && operation.GetGet().GetKey() == "" ||
			operation.GetSet().GetKey() == "doc" || operation.GetIncrement().GetKey() == "name"
	}
	if !counter.packedAnyOf(failing) {
		t.Fatal("no failing operation went in a packed message")
	}
	if value := must(c.Get(ctx, "doc"))(t); value == nil || string(value.Data) != "v1" || value.Version != first {
		t.Fatalf("the refused stale Sets changed doc: %+v", value)
	}
	for _, i := range []int{1, n/2 + 1, n - 1} {
		if value := must(s.Get(ctx, key(i)))(t); value == nil || string(value.Data) != strconv.Itoa(i) {
			t.Fatalf("%s, set beside the failures, read %+v", key(i), value)
		}
	}
}

// awaitAll collects n answers from answers within limit.
func awaitAll(t *testing.T, what string, answers <-chan error, n int, limit time.Duration) []error {
	t.Helper()
	timeout := time.After(limit)
	errs := make([]error, 0, n)
	for len(errs) < n {
		select {
		case err := <-answers:
			errs = append(errs, err)
		case <-timeout:
			t.Fatalf("%s: %d of %d operations still waiting after %v", what, n-len(errs), n, limit)
		}
	}
	return errs
}

// sendHolder holds the next message of a Session stream in SendMsg (a write that takes a
// while) until the test releases it, so the operations called meanwhile wait behind it.
type sendHolder struct {
	mu   sync.Mutex
	next *heldSend // the next Session message to hold, if any
}

type heldSend struct {
	holding chan struct{}           // closed once the message waits, request set
	release chan struct{}           // closed by the test
	request *cachev1.SessionRequest // the message held
}

func (h *sendHolder) hold() *heldSend {
	held := &heldSend{holding: make(chan struct{}), release: make(chan struct{})}
	h.mu.Lock()
	h.next = held
	h.mu.Unlock()
	return held
}

func (h *sendHolder) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption,
) (grpc.ClientStream, error) {
	stream, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != sessionMethod {
		return stream, err
	}
	return heldStream{ClientStream: stream, holder: h}, nil
}

type heldStream struct {
	grpc.ClientStream
	holder *sendHolder
}

func (s heldStream) SendMsg(m any) error {
	s.holder.mu.Lock()
	held := s.holder.next
	s.holder.next = nil
	s.holder.mu.Unlock()
	if held != nil {
		held.request, _ = m.(*cachev1.SessionRequest)
		close(held.holding)
		select {
		case <-held.release:
		case <-time.After(15 * time.Second): // a failed test never leaves it held
		}
	}
	return s.ClientStream.SendMsg(m)
}

func (h *heldSend) await(t *testing.T, what string) {
	t.Helper()
	select {
	case <-h.holding:
	case <-time.After(10 * time.Second):
		t.Fatalf("no Session message held within 10 s: %s", what)
	}
}

// An operation whose ctx ends after the sender took it but before its message is
// written is never sent. Two sets of 600 kB waiting together do not fit one message (a
// MiB at most): the sender writes one and carries the other to lead the next message;
// here that write is held until both callers' deadlines have passed. The set being
// written cannot be unsent and applies; the carried one never reaches the server; the
// stream goes on.
func TestSessionNeverSendsAnOperationWhoseCallerLeftBeforeItsMessage(t *testing.T) {
	holder := &sendHolder{}
	c, _, ctx := dialCounted(t, serverAddr, grpc.WithChainStreamInterceptor(holder.intercept))
	s := c.Session(ctx)
	defer func() {
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close answered %v", err)
		}
	}()
	if n := must(s.Increment(ctx, "warm", 1, 0))(t); n != 1 {
		t.Fatalf("warm counted %d", n)
	}

	blocker := holder.hold()
	blocked := make(chan error, 1)
	go func() {
		_, err := s.Increment(ctx, "first", 1, 0)
		blocked <- err
	}()
	blocker.await(t, "the first increment")
	keys := []string{"big:0", "big:1"}
	value := bytes.Repeat([]byte("v"), 600_000)
	doomedCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	doomed := make(chan error, len(keys))
	for i, key := range keys {
		go func() {
			_, err := s.Set(doomedCtx, key, value)
			doomed <- err
		}()
		nearEventually(t, key+" waits behind the held message", func() bool { return s.Outstanding() == 2+i })
	}
	time.Sleep(50 * time.Millisecond) // registered, the second set's caller now waits to hand it over
	written := holder.hold()
	close(blocker.release)
	written.await(t, "a set of 600 kB")
	for _, err := range awaitAll(t, "the sets past their deadline", doomed, len(keys), 10*time.Second) {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a set past its deadline answered %v", err)
		}
	}
	close(written.release)
	for _, err := range awaitAll(t, "the first increment", blocked, 1, 10*time.Second) {
		if err != nil {
			t.Fatalf("the increment of the held message answered %v", err)
		}
	}
	if n := must(s.Increment(ctx, "after", 1, 0))(t); n != 1 {
		t.Fatalf("an increment after the deadlines counted %d", n)
	}
	writtenKey := written.request.GetOperation().GetSet().GetKey()
	for _, key := range keys {
		got := must(c.Get(ctx, key))(t)
		switch {
		case key == writtenKey && got == nil:
			t.Fatalf("%s, written before its deadline passed, did not apply", key)
		case key != writtenKey && got != nil:
			t.Fatalf("%s applied: its caller's deadline passed before its message was written", key)
		}
	}
	if writtenKey == "" {
		t.Fatalf("the held message was not a lone set: %v", written.request)
	}
}

// A frozen server (SIGSTOP) keeps operations pending: a per-operation deadline, the
// session's own ctx (cancelled, or past its deadline), and Close each act on what they
// own; then the server is killed with
// operations pending, which all fail UNAVAILABLE, and the session recovers on its own
// once the server is back on the same address.
func TestSessionPendingOperationsWhenTheServerStallsAndDies(t *testing.T) {
	server := must(startTestServer())(t)
	defer server.stop()
	// Reconnect attempts 0.1 s apart at most 1 s (grpc-go's default starts at 1 s, up to 2 min).
	c, counter, ctx := dialCounted(t, server.addr, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	}))
	s := c.Session(context.Background())
	defer func() { _ = s.Close(ctx) }()
	must(s.Set(ctx, "k", []byte("v")))(t)
	doomed, endSession := context.WithCancel(context.Background())
	ended := c.Session(doomed)
	closing := c.Session(context.Background())
	must(ended.Get(ctx, "k"))(t)
	must(closing.Get(ctx, "k"))(t)
	_, sentBefore := counter.sessionSent()

	server.freezeServer()
	get := func(on *client.Session, answers chan<- error) {
		value, err := on.Get(ctx, "k")
		if err == nil && (value == nil || string(value.Data) != "v") {
			err = fmt.Errorf("read %+v", value)
		}
		answers <- err
	}
	kept, cut, closed := make(chan error, 20), make(chan error, 5), make(chan error, 10)
	for range 20 {
		go get(s, kept)
	}
	for range 5 {
		go get(ended, cut)
	}
	for range 10 {
		go get(closing, closed)
	}
	nearEventually(t, "35 operations sent to the frozen server", func() bool {
		_, sent := counter.sessionSent()
		return sent >= sentBefore+35
	})
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := s.Get(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an operation past its deadline answered %v", err)
	}
	endSession()
	for _, err := range awaitAll(t, "the ended session", cut, 5, 10*time.Second) {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("an operation of a session whose ctx ended answered %v", err)
		}
	}
	closeDone := make(chan error, 1)
	go func() { closeDone <- closing.Close(ctx) }()
	select {
	case err := <-closeDone:
		t.Fatalf("Close returned (%v) with 10 operations unanswered", err)
	case <-time.After(200 * time.Millisecond):
	}
	server.thawServer()
	for _, err := range awaitAll(t, "after the thaw", kept, 20, 15*time.Second) {
		if err != nil {
			t.Fatalf("an operation pending while the server was frozen answered %v", err)
		}
	}
	for _, err := range awaitAll(t, "the closing session", closed, 10, 15*time.Second) {
		if err != nil {
			t.Fatalf("an operation sent before Close answered %v", err)
		}
	}
	if err := <-closeDone; err != nil {
		t.Fatalf("Close answered %v", err)
	}
	if _, err := closing.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("an operation after Close answered %v", err)
	}
	if streams := counter.calls(sessionMethod); streams != 3 {
		t.Fatalf("the deadline, the cancel or Close opened more streams: %d for 3 sessions", streams)
	}

	// A session whose ctx passes its deadline fails what waits on it.
	server.freezeServer()
	timedCtx, cancelTimed := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancelTimed()
	timed := c.Session(timedCtx)
	late := make(chan error, 5)
	for range 5 {
		go get(timed, late)
	}
	for _, err := range awaitAll(t, "the session past its deadline", late, 5, 10*time.Second) {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("an operation of a session past its deadline answered %v", err)
		}
	}

	// Killed with operations pending, issued at once so that they go packed: each fails
	// UNAVAILABLE, none hangs.
	messagesBefore, sentBefore := counter.sessionSent()
	pending := make(chan error, 50)
	issue := make(chan struct{})
	for range 50 {
		go func() {
			<-issue
			get(s, pending)
		}()
	}
	close(issue)
	nearEventually(t, "50 operations sent to the frozen server", func() bool {
		_, sent := counter.sessionSent()
		return sent >= sentBefore+50
	})
	if messages, _ := counter.sessionSent(); messages-messagesBefore >= 50 {
		t.Fatalf("50 operations issued at once went in %d messages: none packed", messages-messagesBefore)
	}
	killed := time.Now()
	server.killServer()
	for _, err := range awaitAll(t, "after the kill", pending, 50, 10*time.Second) {
		if !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("a pending operation of a killed server answered %v", err)
		}
	}
	t.Logf("50 pending operations failed UNAVAILABLE %v after the kill", time.Since(killed))
	if _, err := s.Get(ctx, "k"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("an operation while the server is gone answered %v", err)
	}

	restarted := time.Now()
	must(0, server.restartServer())(t)
	ready, cancelReady := context.WithTimeout(ctx, 20*time.Second)
	defer cancelReady()
	for state := c.Conn().GetState(); state != connectivity.Ready; state = c.Conn().GetState() {
		c.Conn().Connect()
		if !c.Conn().WaitForStateChange(ready, state) {
			t.Fatalf("the connection did not come back: %v", state)
		}
	}
	if value := must(s.Get(ctx, "k"))(t); value == nil || string(value.Data) != "v" {
		t.Fatalf("the session after the restart read %+v", value)
	}
	t.Logf("the session answered again %v after the restart began", time.Since(restarted))
}

func TestBatcherCoalescesConcurrentCallers(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	const n = 200
	seed := c.Batch()
	for i := range n {
		seed.Set("key:"+strconv.Itoa(i), []byte("value-"+strconv.Itoa(i)))
	}
	must(seed.Exec(ctx))(t)
	seeded := counter.calls(batchMethod)

	b := c.Batcher(client.BatcherOptions{})
	start := make(chan struct{})
	failures := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			value, err := b.Get(ctx, "key:"+strconv.Itoa(i))
			if err != nil || value == nil || string(value.Data) != "value-"+strconv.Itoa(i) {
				failures <- fmt.Errorf("caller %d read %+v, %v", i, value, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	batches := counter.calls(batchMethod) - seeded
	t.Logf("%d concurrent Gets went out as %d Batch RPCs", n, batches)
	if batches > n/4 {
		t.Fatalf("%d concurrent Gets made %d Batch RPCs: not coalesced", n, batches)
	}
	if unary := counter.calls("/cachet.cache.v1.CacheService/Get"); unary != 0 {
		t.Fatalf("the batcher made %d unary Gets", unary)
	}
}

// With its one slot busy, calls queue and go out together as one Batch when it returns;
// then the server dies: every caller, and a Batch, fails UNAVAILABLE as a unary call.
func TestBatcherQueuesWhileBusyThenTheServerDies(t *testing.T) {
	server := must(startTestServer())(t)
	defer server.stop()
	c, counter, ctx := dialCounted(t, server.addr)
	must(c.Set(ctx, "k", []byte("v")))(t)
	b := c.Batcher(client.BatcherOptions{MaxInFlight: 1, MaxBatch: 8})
	server.freezeServer()
	first := make(chan error, 1)
	go func() {
		_, err := b.Set(ctx, "first", []byte("1"))
		first <- err
	}()
	nearEventually(t, "the first call in flight", func() bool { return counter.calls(batchMethod) == 1 })
	answers := make(chan error, 20)
	for i := range 20 {
		go func() {
			value, err := b.Get(ctx, "k")
			if err == nil && (value == nil || string(value.Data) != "v") {
				err = fmt.Errorf("caller %d read %+v", i, value)
			}
			answers <- err
		}()
	}
	nearEventually(t, "20 calls waiting", func() bool { return b.Waiting() == 20 })
	server.thawServer()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for _, err := range awaitAll(t, "the queued calls", answers, 20, 15*time.Second) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := counter.calls(batchMethod); got != 1+3 {
		t.Fatalf("1 call in flight then 20 waiting, 8 a Batch, made %d Batch RPCs; want 1+3", got)
	}

	// The server gone: every caller gets UNAVAILABLE, as from a unary call; so does a Batch.
	server.killServer()
	gone := make(chan error, 10)
	for range 10 {
		go func() {
			_, err := b.Get(ctx, "k")
			gone <- err
		}()
	}
	for _, err := range awaitAll(t, "callers of a dead server", gone, 10, 15*time.Second) {
		if !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("a batched Get to a dead server answered %v", err)
		}
	}
	// A Batch is retried as the unary calls are when each operation may run twice.
	before := counter.calls(batchMethod)
	reads := c.Batch()
	reads.Get("k")
	reads.Increment("n", 1, 0) // its request_id makes it safe to retry
	reads.Delete("k")
	if results, err := reads.Exec(ctx); !errors.Is(err, client.ErrUnavailable) || !errors.Is(results[2].Err, client.ErrUnavailable) {
		t.Fatalf("a Batch to a dead server answered %v, %v", results, err)
	}
	if got := counter.calls(batchMethod) - before; got != 4 {
		t.Fatalf("a Batch of retriable operations made %d attempts, want 4", got)
	}
	before = counter.calls(batchMethod)
	writes := c.Batch()
	writes.Get("k")
	writes.Set("k", []byte("w"))
	if results, err := writes.Exec(ctx); !errors.Is(err, client.ErrUnavailable) || len(results) != 2 || !errors.Is(results[1].Err, client.ErrUnavailable) {
		t.Fatalf("a Batch to a dead server answered %v, %v", results, err)
	}
	if got := counter.calls(batchMethod) - before; got != 1 {
		t.Fatalf("a Batch with a Set made %d attempts, want 1: it is not idempotent", got)
	}
}

// With its one slot held by a call to a frozen server, 30 callers of 300 kB sets queue
// (9 MB, over the server's 8 MiB as one Batch); when it answers they go out a MiB
// (three sets) per Batch.
func TestBatcherSendsBigValuesAMiBPerBatch(t *testing.T) {
	server := must(startTestServer())(t)
	defer server.stop()
	c, counter, ctx := dialCounted(t, server.addr)
	must(c.Set(ctx, "warm", []byte("up")))(t)
	b := c.Batcher(client.BatcherOptions{MaxInFlight: 1})
	value := bytes.Repeat([]byte("v"), 300_000)
	server.freezeServer()
	first := make(chan error, 1)
	go func() {
		_, err := b.Set(ctx, "first", value)
		first <- err
	}()
	nearEventually(t, "the first call in flight", func() bool { return counter.calls(batchMethod) == 1 })
	answers := make(chan error, 30)
	for i := range 30 {
		go func() {
			_, err := b.Set(ctx, "big:"+strconv.Itoa(i), value)
			answers <- err
		}()
	}
	nearEventually(t, "30 calls waiting", func() bool { return b.Waiting() == 30 })
	server.thawServer()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for _, err := range awaitAll(t, "the queued sets", answers, 30, 20*time.Second) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := counter.calls(batchMethod); got != 1+10 {
		t.Fatalf("1 call in flight then 30 sets of 300 kB waiting made %d Batch RPCs; want 1+10", got)
	}
	if got := must(c.Get(ctx, "big:29"))(t); got == nil || !bytes.Equal(got.Data, value) {
		t.Fatal("big:29 did not read back what its set wrote")
	}
}

func TestBatcherLoneCallerWaitsForNothing(t *testing.T) {
	c, counter, ctx := dialCounted(t, serverAddr)
	b := c.Batcher(client.BatcherOptions{})
	const calls = 40
	started := time.Now()
	for i := range calls / 2 {
		key := "lone:" + strconv.Itoa(i)
		version, err := b.Set(ctx, key, []byte(key), client.WithTTL(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		value, err := b.Get(ctx, key)
		if err != nil || value == nil || !bytes.Equal(value.Data, []byte(key)) || value.Version != version {
			t.Fatalf("Get after Set of %s read %+v, %v", key, value, err)
		}
	}
	batched := time.Since(started)
	if got := counter.calls(batchMethod); got != calls {
		t.Fatalf("%d sequential calls made %d Batch RPCs, want one each", calls, got)
	}
	started = time.Now()
	for i := range calls / 2 {
		key := "lone:" + strconv.Itoa(i)
		must(c.Set(ctx, key, []byte(key), client.WithTTL(time.Minute)))(t)
		must(c.Get(ctx, key))(t)
	}
	t.Logf("%d sequential calls: %v per call batched, %v per unary call", calls, batched/calls, time.Since(started)/calls)
}

func TestBatcherKeepsErrorsPerCaller(t *testing.T) {
	c, _, ctx := dialCounted(t, serverAddr)
	version := must(c.Set(ctx, "doc", []byte("v1")))(t)
	must(c.Set(ctx, "name", []byte("bob")))(t)
	_, unaryStale := c.Set(ctx, "doc", []byte("x"), client.IfVersion(version+1))
	_, unaryEmpty := c.Get(ctx, "")
	_, unaryNaN := c.Increment(ctx, "name", 1, 0)

	b := c.Batcher(client.BatcherOptions{MaxInFlight: 2})
	start := make(chan struct{})
	failures := make(chan error, 80)
	var wg sync.WaitGroup
	for i := range 80 {
		wg.Go(func() {
			<-start
			var err error
			switch i % 4 {
			case 0:
				var value *client.Value
				value, err = b.Get(ctx, "doc")
				if err == nil && (value == nil || string(value.Data) != "v1") {
					err = fmt.Errorf("read %+v", value)
				}
			case 1:
				_, got := b.Get(ctx, "")
				if got == nil {
					err = errors.New("an empty key answered no error")
				} else if cerr := client.AsError(got); cerr.Code != codes.InvalidArgument || cerr.Message != client.AsError(unaryEmpty).Message {
					err = fmt.Errorf("an empty key answered %v, unary %v", got, unaryEmpty)
				}
			case 2:
				_, got := b.Set(ctx, "doc", []byte("x"), client.IfVersion(version+1))
				if !errors.Is(got, client.ErrVersionMismatch) || client.AsError(got).Metadata["current_version"] != client.AsError(unaryStale).Metadata["current_version"] {
					err = fmt.Errorf("a stale version answered %v, unary %v", got, unaryStale)
				}
			case 3:
				_, got := b.Increment(ctx, "name", 1, 0)
				if !errors.Is(got, client.ErrNotANumber) || client.AsError(got).Message != client.AsError(unaryNaN).Message {
					err = fmt.Errorf("an increment of a string answered %v, unary %v", got, unaryNaN)
				}
			}
			if err != nil {
				failures <- fmt.Errorf("caller %d: %w", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	if value := must(c.Get(ctx, "doc"))(t); value == nil || string(value.Data) != "v1" || value.Version != version {
		t.Fatalf("refused writes changed doc: %+v", value)
	}
	// A caller's own namespace metadata is not sent: callers share the Batch.
	elsewhere := metadata.AppendToOutgoingContext(ctx, client.NamespaceMetadata, "go-batch-elsewhere")
	if value := must(b.Get(elsewhere, "doc"))(t); value == nil || string(value.Data) != "v1" {
		t.Fatalf("a batched Get with another namespace in its metadata read %+v", value)
	}
	// A caller's ctx bounds its wait alone.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Get(cancelled, "doc"); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled caller answered %v", err)
	}
}

// must2 is must for calls answering two values.
func must2[A, B any](a A, b B, err error) func(*testing.T) (A, B) {
	return func(t *testing.T) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

// A credential with only the read role: its reads work in a Session, a Batch and a
// Batcher; its writes are refused PERMISSION_DENIED, per operation in a Session, for the
// whole call in a Batch (the server decides a Batch's role by its operations), and per
// caller in a Batcher (which sends the reads coalesced with a refused write again alone).
func TestReadOnlyCredentialInSessionBatchAndBatcher(t *testing.T) {
	dir := t.TempDir()
	const namespace, reader, writer = "go-batch-auth", "go-reader-3c9e", "go-writer-81d2"
	digest := func(key string) string { sum := sha256.Sum256([]byte(key)); return hex.EncodeToString(sum[:]) }
	config := filepath.Join(dir, "cachet.yaml")
	yaml := "auth:\n  mode: required\n  api_keys:\n" +
		"    - id: reader\n      sha256: " + digest(reader) + "\n      namespaces: [" + namespace + "]\n      roles: [read]\n" +
		"    - id: writer\n      sha256: " + digest(writer) + "\n      namespaces: [" + namespace + "]\n      roles: [read, write]\n"
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	server := must(startTestServer("CACHET_CONFIG_FILE="+config, "CACHET_AUTH__MODE=required"))(t)
	defer server.stop()
	token := func(key string) grpc.DialOption {
		return client.AllowPlaintextToken(func(context.Context) (string, error) { return key, nil })
	}
	w := must(client.Dial(server.addr, namespace, token(writer)))(t)
	defer w.Close()
	counter := &rpcCounter{begun: map[string]int{}, sent: map[string]int{}}
	r := must(client.Dial(server.addr, namespace, token(reader), grpc.WithStatsHandler(counter)))(t)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must(w.Set(ctx, "k", []byte("v")))(t)
	_, unaryRefusal := r.Set(ctx, "k", []byte("mine"))
	if !errors.Is(unaryRefusal, client.ErrPermissionDenied) {
		t.Fatalf("a unary write without the write role answered %v", unaryRefusal)
	}
	read := func(what string, value *client.Value, err error) {
		t.Helper()
		if err != nil || value == nil || string(value.Data) != "v" {
			t.Fatalf("%s read %+v, %v", what, value, err)
		}
	}

	s := r.Session(ctx)
	defer s.Close(ctx)
	value, err := s.Get(ctx, "k")
	read("a session of the reader", value, err)
	_, err = s.Set(ctx, "k", []byte("mine"))
	if !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("a session write without the write role answered %v", err)
	}
	t.Logf("reasons of the refusal: %q in a session, %q unary", client.Reason(err), client.Reason(unaryRefusal))
	if _, err := s.Increment(ctx, "n", 1, 0); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("a session increment without the write role answered %v", err)
	}
	value, err = s.Get(ctx, "k")
	read("the session after its refused writes", value, err)
	if streams := counter.calls(sessionMethod); streams != 1 {
		t.Fatalf("refused writes ended the stream: %d streams", streams)
	}

	reads := r.Batch()
	get := reads.Get("k")
	reads.HashGet("h", "f")
	must(reads.Exec(ctx))(t)
	value, err = get.Result()
	read("a batch of reads", value, err)
	mixed := r.Batch()
	mixed.Get("k")
	mixed.Set("k", []byte("mine"))
	if results, err := mixed.Exec(ctx); !errors.Is(err, client.ErrPermissionDenied) || !errors.Is(results[0].Err, client.ErrPermissionDenied) {
		t.Fatalf("a batch with a write without the write role answered %v, %v", results, err)
	}

	// Coalesced: one call in flight (the server frozen), then reads and a write waiting.
	b := r.Batcher(client.BatcherOptions{MaxInFlight: 1})
	before := counter.calls(batchMethod)
	server.freezeServer()
	first := make(chan error, 1)
	go func() {
		value, err := b.Get(ctx, "k")
		if err == nil && (value == nil || string(value.Data) != "v") {
			err = fmt.Errorf("read %+v", value)
		}
		first <- err
	}()
	nearEventually(t, "the first call in flight", func() bool { return counter.calls(batchMethod) == before+1 })
	readers := make(chan error, 10)
	for range 10 {
		go func() {
			value, err := b.Get(ctx, "k")
			if err == nil && (value == nil || string(value.Data) != "v") {
				err = fmt.Errorf("read %+v", value)
			}
			readers <- err
		}()
	}
	refused := make(chan error, 1)
	go func() {
		_, err := b.Set(ctx, "k", []byte("mine"))
		refused <- err
	}()
	nearEventually(t, "11 calls waiting", func() bool { return b.Waiting() == 11 })
	server.thawServer()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for _, err := range awaitAll(t, "readers batched with a refused write", readers, 10, 15*time.Second) {
		if err != nil {
			t.Fatalf("a reader batched with a refused write answered %v", err)
		}
	}
	if err := <-refused; !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("the batched write without the write role answered %v", err)
	}
	if got := counter.calls(batchMethod) - before; got != 3 {
		t.Fatalf("made %d Batch RPCs, want 3: the first, the refused mixed one, its reads alone", got)
	}
	if value := must(w.Get(ctx, "k"))(t); value == nil || string(value.Data) != "v" {
		t.Fatalf("the reader's refused writes changed k: %+v", value)
	}
}

// BenchmarkConcurrentGets: 32 goroutines reading through each of the three paths
// (`go test -run '^$' -bench ConcurrentGets ./client/`): unary Get, a Session (and gets
// per Session message), a Batcher.
func BenchmarkConcurrentGets(b *testing.B) {
	counter := &rpcCounter{begun: map[string]int{}, sent: map[string]int{}}
	c, err := client.Dial(serverAddr, fmt.Sprintf("go-bench-%d", time.Now().UnixNano()), grpc.WithStatsHandler(counter))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Set(ctx, "hot", []byte("value"), client.WithTTL(time.Hour)); err != nil {
		b.Fatal(err)
	}
	session := c.Session(ctx)
	defer session.Close(ctx)
	paths := []struct {
		name string
		ops  client.Operations
	}{{"unary", c}, {"session", session}, {"batcher", c.Batcher(client.BatcherOptions{})}}
	for _, path := range paths {
		b.Run(path.name, func(b *testing.B) {
			batches := counter.calls(batchMethod)
			messages, _ := counter.sessionSent()
			b.SetParallelism(32 / max(1, runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if value, err := path.ops.Get(ctx, "hot"); err != nil || value == nil {
						b.Error("Get", err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "gets/s")
			if path.name == "session" {
				sent, _ := counter.sessionSent()
				b.ReportMetric(float64(b.N)/float64(max(1, sent-messages)), "gets/message")
			}
			if path.name == "batcher" {
				b.ReportMetric(float64(b.N)/float64(max(1, counter.calls(batchMethod)-batches)), "gets/batch")
			}
		})
	}
}
