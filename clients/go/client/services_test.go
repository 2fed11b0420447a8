package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cachet-dev/cachet/clients/go/client"
	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
	eventbusv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/eventbus/v1"
)

// must(call())(t) is call's value, failing the test on its error.
func must[T any](value T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return value
	}
}

func TestErrorsAreTypedAndMatchSentinels(t *testing.T) {
	c, ctx := dial(t)
	first := must(c.Set(ctx, "doc", []byte("v1")))(t)
	_, err := c.Set(ctx, "doc", []byte("v2"), client.IfVersion(first+1))
	var cerr *client.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *client.Error, got %T %v", err, err)
	}
	if cerr.Code != codes.Aborted || cerr.Reason != "VERSION_MISMATCH" || cerr.Metadata["current_version"] != strconv.FormatUint(first, 10) {
		t.Fatalf("unexpected error fields: %+v", cerr)
	}
	if !errors.Is(err, client.ErrVersionMismatch) || errors.Is(err, client.ErrLockHeld) || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("sentinel matching is wrong for %v", err)
	}
	_, err = c.Set(ctx, "missing", []byte("x"), client.IfPresent())
	if !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("IfPresent on a missing key answered %v", err)
	}
	_, err = c.GetMany(ctx)
	if !errors.Is(err, client.ErrInvalidArgument) || !errors.As(err, &cerr) || len(cerr.FieldViolations) == 0 {
		t.Fatalf("GetMany without keys answered %v", err)
	}
	// A raw stub's error converts too.
	_, err = cachev1.NewCacheServiceClient(c.Conn()).Get(ctx, &cachev1.GetRequest{})
	if cerr := client.AsError(err); cerr == nil || cerr.Code != codes.InvalidArgument || cerr.FieldViolations[0].GetField() != "key" {
		t.Fatalf("AsError(%v) = %+v", err, cerr)
	}
	if client.AsError(nil) != nil || client.AsError(errors.New("plain")) != nil {
		t.Fatal("AsError made an *Error of a non-status error")
	}
}

func TestContextDeadlineIsTheCallDeadline(t *testing.T) {
	c, _ := dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	_, err := c.Get(ctx, "k")
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, &client.Error{Code: codes.DeadlineExceeded}) {
		t.Fatalf("a call past its deadline answered %v", err)
	}
	short, err := client.Dial(serverAddr, "go-default-timeout", client.WithDefaultTimeout(time.Nanosecond))
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	if _, err := short.Get(context.Background(), "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WithDefaultTimeout did not bound a call without deadline: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := short.Get(ctx, "k"); err != nil {
		t.Fatalf("WithDefaultTimeout replaced the context's own deadline: %v", err)
	}
}

func TestCacheBatchesAndTTLs(t *testing.T) {
	c, ctx := dial(t)
	versions := must(c.SetMany(ctx, time.Minute, client.Item{Key: "a", Value: []byte("1")}, client.Item{Key: "b", Value: []byte("2"), TTL: time.Hour}))(t)
	if len(versions) != 2 || versions[0] == 0 {
		t.Fatalf("SetMany answered %v", versions)
	}
	values := must(c.GetMany(ctx, "a", "missing", "b"))(t)
	if len(values) != 3 || string(values[0].Data) != "1" || values[1] != nil || string(values[2].Data) != "2" || values[2].Version != versions[1] {
		t.Fatalf("GetMany answered %+v", values)
	}
	if exists := must(c.Exists(ctx, "a", "missing"))(t); len(exists) != 2 || !exists[0] || exists[1] {
		t.Fatalf("Exists answered %v", exists)
	}
	ttl, found, err := c.TTL(ctx, "b")
	if err != nil || !found || ttl <= 59*time.Minute || ttl > time.Hour {
		t.Fatalf("TTL of b answered %v %v %v", ttl, found, err)
	}
	if found := must(c.Expire(ctx, "b", 10*time.Second))(t); !found {
		t.Fatal("Expire did not find b")
	}
	if ttl, _, _ := c.TTL(ctx, "b"); ttl > 10*time.Second {
		t.Fatalf("Expire left a TTL of %v", ttl)
	}
	if _, found, _ := c.TTL(ctx, "missing"); found {
		t.Fatal("TTL found a missing key")
	}
	if found := must(c.Expire(ctx, "missing", time.Second))(t); found {
		t.Fatal("Expire found a missing key")
	}
	if _, err := c.Persist(ctx, "a"); !errors.Is(err, &client.Error{Reason: "PERSIST_DISABLED"}) {
		t.Fatalf("Persist answered %v", err)
	}
	must(c.Set(ctx, "a", []byte("3"), client.KeepTTL()))(t)
	if ttl, _, _ := c.TTL(ctx, "a"); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("KeepTTL left a TTL of %v", ttl)
	}
	if got := must(c.IncrementFloat(ctx, "f", 1.5, time.Minute))(t); got != 1.5 {
		t.Fatalf("IncrementFloat answered %v", got)
	}
	must(c.Set(ctx, "user:1", []byte("x")))(t)
	must(c.Set(ctx, "user:2", []byte("y")))(t)
	if deleted := must(c.InvalidatePattern(ctx, "user:*"))(t); deleted != 2 {
		t.Fatalf("InvalidatePattern deleted %d, want 2", deleted)
	}
	if _, err := c.InvalidatePattern(ctx, ""); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("an empty pattern answered %v", err)
	}
}

func TestGetOrSetComputesOnceAcrossCallers(t *testing.T) {
	c, ctx := dial(t)
	other := sameNamespace(t, c) // another connection: another process, as far as the server knows
	var computed atomic.Int32
	compute := func(context.Context) ([]byte, error) {
		computed.Add(1)
		time.Sleep(100 * time.Millisecond)
		return []byte("expensive"), nil
	}
	var wg sync.WaitGroup
	results := make([][]byte, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func(caller *client.Client) {
			defer wg.Done()
			results[i], errs[i] = caller.GetOrSet(ctx, "report", compute, client.GetOrSetOptions{TTL: time.Minute})
		}(map[bool]*client.Client{true: c, false: other}[i%2 == 0])
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || string(results[i]) != "expensive" {
			t.Fatalf("caller %d answered %q, %v", i, results[i], errs[i])
		}
	}
	if n := computed.Load(); n != 1 {
		t.Fatalf("computed %d times, want once", n)
	}
	boom := errors.New("backing store down")
	_, err := c.GetOrSet(ctx, "failing", func(context.Context) ([]byte, error) { return nil, boom },
		client.GetOrSetOptions{LeaseTTL: 100 * time.Millisecond})
	if !errors.Is(err, boom) {
		t.Fatalf("a failing compute answered %v", err)
	}
	// A write during the computation voids the lease: the computed value is answered,
	// the newer write is kept.
	value := must(c.GetOrSet(ctx, "raced", func(ctx context.Context) ([]byte, error) {
		_, err := other.Set(ctx, "raced", []byte("newer"))
		return []byte("computed"), err
	}, client.GetOrSetOptions{}))(t)
	if string(value) != "computed" {
		t.Fatalf("GetOrSet answered %q", value)
	}
	if stored := must(c.Get(ctx, "raced"))(t); string(stored.Data) != "newer" {
		t.Fatalf("a lost lease overwrote the newer write: %q", stored.Data)
	}
}

func TestGetOrSetAnswersStaleWhileRecomputing(t *testing.T) {
	c, ctx := dial(t)
	opts := client.GetOrSetOptions{TTL: time.Minute, StaleTTL: time.Minute, Tags: []string{"t"}}
	must(c.GetOrSet(ctx, "k", func(context.Context) ([]byte, error) { return []byte("old"), nil }, opts))(t)
	must(c.InvalidateTags(ctx, "t"))(t)
	computing, release := make(chan struct{}), make(chan struct{})
	done := make(chan []byte)
	go func() {
		value, _ := c.GetOrSet(ctx, "k", func(context.Context) ([]byte, error) {
			close(computing)
			<-release
			return []byte("new"), nil
		}, opts)
		done <- value
	}()
	<-computing
	stale := must(c.GetOrSet(ctx, "k", func(context.Context) ([]byte, error) { return []byte("second"), nil }, opts))(t)
	close(release)
	if string(stale) != "old" {
		t.Fatalf("a caller during the recompute answered %q, want the stale copy", stale)
	}
	if fresh := <-done; string(fresh) != "new" {
		t.Fatalf("the recompute answered %q", fresh)
	}
}

func TestTxn(t *testing.T) {
	c, ctx := dial(t)
	v := must(c.Set(ctx, "{acct}:alice", []byte("100")))(t)
	result := must(c.Txn().
		If(client.VersionIs("{acct}:alice", v), client.KeyExists("{acct}:bob", false)).
		Then(client.TxnSet("{acct}:alice", []byte("90"), time.Minute), client.TxnIncrement("{acct}:bob", 10, 0), client.TxnGet("{acct}:alice")).
		Else(client.TxnGet("{acct}:alice")).
		Commit(ctx))(t)
	if !result.Succeeded || len(result.Results) != 3 || result.Results[1].GetIntValue() != 10 || string(result.Results[2].GetValue()) != "90" {
		t.Fatalf("Txn answered %+v", result)
	}
	result = must(c.Txn().If(client.ValueIs("{acct}:alice", []byte("100"))).Then(client.TxnDelete("{acct}:alice")).
		Else(client.TxnGet("{acct}:alice")).Commit(ctx))(t)
	if result.Succeeded || string(result.Results[0].GetValue()) != "90" {
		t.Fatalf("a failed comparison answered %+v", result)
	}
	result = must(c.Txn().If(client.CompareNumber("{acct}:bob", client.GreaterOrEqual, 10), client.CompareTTL("{acct}:bob", client.Greater, 0)).
		Then(client.TxnDelete("{acct}:bob")).Commit(ctx))(t)
	if !result.Succeeded || !result.Results[0].GetFound() {
		t.Fatalf("numeric comparisons answered %+v", result)
	}
	if _, err := c.Txn().Then(client.TxnSet("a", nil, 0), client.TxnSet("b", nil, 0)).Commit(ctx); !errors.Is(err, client.ErrCrossSlot) {
		t.Fatalf("a Txn over two slots answered %v", err)
	}
}

func TestCollections(t *testing.T) {
	c, ctx := dial(t)
	ttl := client.CollectionTTL{TTL: time.Minute}
	if added := must(c.HashSet(ctx, "h", []client.Field{{"a", []byte("1")}, {"b", []byte("2")}}, false, ttl))(t); added != 2 {
		t.Fatalf("HashSet added %d", added)
	}
	if got := must(c.HashGet(ctx, "h", "a", "zz"))(t); string(got[0]) != "1" || got[1] != nil {
		t.Fatalf("HashGet answered %q", got)
	}
	if n := must(c.HashIncrement(ctx, "h", "n", 5, ttl))(t); n != 5 {
		t.Fatalf("HashIncrement answered %d", n)
	}
	if f := must(c.HashIncrementFloat(ctx, "h", "f", 0.5, ttl))(t); f != 0.5 {
		t.Fatalf("HashIncrementFloat answered %v", f)
	}
	if n := must(c.HashLength(ctx, "h"))(t); n != 4 {
		t.Fatalf("HashLength answered %d", n)
	}
	if all := must(c.HashGetAll(ctx, "h"))(t); len(all) != 4 {
		t.Fatalf("HashGetAll answered %v", all)
	}
	if keys := must(c.HashKeys(ctx, "h"))(t); len(keys) != 4 {
		t.Fatalf("HashKeys answered %v", keys)
	}
	if values := must(c.HashValues(ctx, "h"))(t); len(values) != 4 {
		t.Fatalf("HashValues answered %q", values)
	}
	page, _, err := c.HashScan(ctx, "h", "a", "", 10)
	if err != nil || len(page) != 1 || page[0].Name != "a" {
		t.Fatalf("HashScan answered %v %v", page, err)
	}
	if n := must(c.HashDelete(ctx, "h", "a", "zz"))(t); n != 1 {
		t.Fatalf("HashDelete answered %d", n)
	}

	if n := must(c.ListPush(ctx, "{l}1", client.Right, [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("b")}, 0, ttl))(t); n != 4 {
		t.Fatalf("ListPush answered %d", n)
	}
	if got := must(c.ListRange(ctx, "{l}1", 0, -1))(t); len(got) != 4 || string(got[3]) != "b" {
		t.Fatalf("ListRange answered %q", got)
	}
	if n := must(c.ListRemove(ctx, "{l}1", []byte("b"), 0))(t); n != 2 {
		t.Fatalf("ListRemove answered %d", n)
	}
	if got := must(c.ListPop(ctx, "{l}1", client.Left, 1, 0))(t); len(got) != 1 || string(got[0]) != "a" {
		t.Fatalf("ListPop answered %q", got)
	}
	if moved := must(c.ListMove(ctx, "{l}1", "{l}2", client.Left, client.Right, 0, ttl))(t); string(moved) != "c" {
		t.Fatalf("ListMove answered %q", moved)
	}
	if moved := must(c.ListMove(ctx, "{l}1", "{l}2", client.Left, client.Right, 0, ttl))(t); moved != nil {
		t.Fatalf("ListMove from an empty list answered %q", moved)
	}
	must(c.ListPush(ctx, "{l}2", client.Right, [][]byte{[]byte("d"), []byte("e")}, 0, ttl))(t)
	if n := must(c.ListTrim(ctx, "{l}2", 0, 1))(t); n != 2 {
		t.Fatalf("ListTrim answered %d", n)
	}
	if n := must(c.ListLength(ctx, "{l}2"))(t); n != 2 {
		t.Fatalf("ListLength answered %d", n)
	}

	if n := must(c.SetAdd(ctx, "{s}1", ttl, []byte("x"), []byte("y"), []byte("z")))(t); n != 3 {
		t.Fatalf("SetAdd answered %d", n)
	}
	must(c.SetAdd(ctx, "{s}2", ttl, []byte("y")))(t)
	if got := must(c.SetIsMember(ctx, "{s}1", []byte("x"), []byte("q")))(t); !got[0] || got[1] {
		t.Fatalf("SetIsMember answered %v", got)
	}
	if got := must(c.SetCombine(ctx, client.Intersect, "{s}1", "{s}2"))(t); len(got) != 1 || string(got[0]) != "y" {
		t.Fatalf("SetCombine answered %q", got)
	}
	if n := must(c.SetCombineStore(ctx, client.Union, "{s}3", time.Minute, "{s}1", "{s}2"))(t); n != 3 {
		t.Fatalf("SetCombineStore answered %d", n)
	}
	if moved := must(c.SetMove(ctx, "{s}1", "{s}2", []byte("x"), ttl))(t); !moved {
		t.Fatal("SetMove did not move")
	}
	if n := must(c.SetRemove(ctx, "{s}1", []byte("y")))(t); n != 1 {
		t.Fatalf("SetRemove answered %d", n)
	}
	if got := must(c.SetMembers(ctx, "{s}1"))(t); len(got) != 1 || string(got[0]) != "z" {
		t.Fatalf("SetMembers answered %q", got)
	}
	if got := must(c.SetRandomMembers(ctx, "{s}2", 5))(t); len(got) != 2 {
		t.Fatalf("SetRandomMembers answered %q", got)
	}
	if got := must(c.SetPop(ctx, "{s}1", 1))(t); len(got) != 1 || string(got[0]) != "z" {
		t.Fatalf("SetPop answered %q", got)
	}
	if n := must(c.SetCardinality(ctx, "{s}1"))(t); n != 0 {
		t.Fatalf("SetCardinality answered %d", n)
	}

	added, changed, err := c.SortedSetAdd(ctx, "z", 0, ttl, client.Scored{Member: []byte("a"), Score: 1}, client.Scored{Member: []byte("b"), Score: 2}, client.Scored{Member: []byte("c"), Score: 3})
	if err != nil || added != 3 || changed != 3 {
		t.Fatalf("SortedSetAdd answered %d %d %v", added, changed, err)
	}
	if score := must(c.SortedSetIncrement(ctx, "z", []byte("a"), 10, ttl))(t); score != 11 {
		t.Fatalf("SortedSetIncrement answered %v", score)
	}
	if rank, found, err := c.SortedSetRank(ctx, "z", []byte("a"), client.Descending); err != nil || !found || rank != 0 {
		t.Fatalf("SortedSetRank answered %d %v %v", rank, found, err)
	}
	if got := must(c.SortedSetRangeByRank(ctx, "z", 0, 0, client.Ascending))(t); len(got) != 1 || string(got[0].Member) != "b" {
		t.Fatalf("SortedSetRangeByRank answered %v", got)
	}
	low, high := 2.0, 3.0
	if got := must(c.SortedSetRangeByScore(ctx, "z", client.ScoreRange{Min: &low, Max: &high}, client.Descending, 0, 0))(t); len(got) != 2 || string(got[0].Member) != "c" {
		t.Fatalf("SortedSetRangeByScore answered %v", got)
	}
	if n := must(c.SortedSetCount(ctx, "z", client.ScoreRange{Min: &low, ExclusiveMin: true}))(t); n != 2 {
		t.Fatalf("SortedSetCount answered %d", n)
	}
	if scores := must(c.SortedSetScore(ctx, "z", []byte("b"), []byte("q")))(t); *scores[0] != 2 || scores[1] != nil {
		t.Fatalf("SortedSetScore answered %v", scores)
	}
	if n := must(c.SortedSetRemoveByScore(ctx, "z", client.ScoreRange{Max: &low}))(t); n != 1 {
		t.Fatalf("SortedSetRemoveByScore answered %d", n)
	}
	if n := must(c.SortedSetRemoveByRank(ctx, "z", 0, 0))(t); n != 1 {
		t.Fatalf("SortedSetRemoveByRank answered %d", n)
	}
	if n := must(c.SortedSetRemove(ctx, "z", []byte("a")))(t); n != 1 {
		t.Fatalf("SortedSetRemove answered %d", n)
	}
	if n := must(c.SortedSetCardinality(ctx, "z"))(t); n != 0 {
		t.Fatalf("SortedSetCardinality answered %d", n)
	}

	if previous := must(c.SetBit(ctx, "bits", 7, true, time.Minute))(t); previous {
		t.Fatal("SetBit found the bit set")
	}
	if bit := must(c.GetBit(ctx, "bits", 7))(t); !bit {
		t.Fatal("GetBit did not see the bit")
	}
	if n := must(c.BitCount(ctx, "bits"))(t); n != 1 {
		t.Fatalf("BitCount answered %d", n)
	}
	if _, err := c.HashLength(ctx, "bits"); !errors.Is(err, client.ErrWrongType) {
		t.Fatalf("a hash call on a string answered %v", err)
	}
}

func TestWatchInvalidations(t *testing.T) {
	c, ctx := dial(t)
	watch, err := c.WatchInvalidations(ctx, "user:")
	if err != nil {
		t.Fatal(err)
	}
	must(c.Set(ctx, "other", []byte("ignored")))(t)
	must(c.Set(ctx, "user:1", []byte("x")))(t)
	must(c.Delete(ctx, "user:1"))(t)
	var changed []string
	for event, err := range watch {
		if err != nil {
			t.Fatal(err)
		}
		if event.FlushAll || event.Synced {
			continue
		}
		changed = append(changed, event.Keys...)
		if len(changed) >= 2 {
			break
		}
	}
	for _, key := range changed {
		if key != "user:1" {
			t.Fatalf("the watch reported %v, want only user:1", changed)
		}
	}
	if _, err := c.WatchInvalidations(ctx, ""); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("an empty prefix answered %v", err)
	}
}

func TestLocks(t *testing.T) {
	c, ctx := dial(t)
	locks := c.Locks()
	lease := must(locks.Acquire(ctx, "job", 5*time.Second, client.LockOptions{Holder: "go-test"}))(t)
	_, err := locks.Acquire(ctx, "job", time.Second, client.LockOptions{Wait: 50 * time.Millisecond})
	var cerr *client.Error
	if !errors.As(err, &cerr) || cerr.Reason != "LOCK_HELD" || cerr.Metadata["remaining_ttl_ms"] == "" {
		t.Fatalf("a held lock answered %v", err)
	}
	before := lease.ExpireTime
	if err := locks.Extend(ctx, lease, time.Minute); err != nil || !lease.ExpireTime.After(before) {
		t.Fatalf("Extend answered %v, expiry %v -> %v", err, before, lease.ExpireTime)
	}
	state := must(locks.Inspect(ctx, "job"))(t)
	if !state.GetHeld() || state.GetHolder() != "go-test" || state.GetFencingToken() != lease.FencingToken {
		t.Fatalf("Inspect answered %v", state)
	}
	if err := locks.Release(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if err := locks.Release(ctx, lease); !errors.Is(err, client.ErrLockNotOwned) {
		t.Fatalf("a second Release answered %v", err)
	}
	if err := locks.Extend(ctx, lease, time.Second); !errors.Is(err, client.ErrLockNotOwned) {
		t.Fatalf("Extend after Release answered %v", err)
	}
	// A waiter is woken by the release and gets a larger fencing token.
	first := must(locks.Acquire(ctx, "queue", 5*time.Second, client.LockOptions{}))(t)
	next := make(chan *client.Lease)
	go func() {
		lease, _ := locks.Acquire(ctx, "queue", 5*time.Second, client.LockOptions{Wait: 5 * time.Second})
		next <- lease
	}()
	time.Sleep(50 * time.Millisecond)
	if err := locks.Release(ctx, first); err != nil {
		t.Fatal(err)
	}
	if second := <-next; second == nil || second.FencingToken <= first.FencingToken {
		t.Fatalf("the waiter got %+v after %d", second, first.FencingToken)
	}
}

func TestSemaphores(t *testing.T) {
	c, ctx := dial(t)
	locks := c.Locks()
	a := must(locks.AcquireSemaphore(ctx, "pool", 2, 5*time.Second, client.LockOptions{}))(t)
	b := must(locks.AcquireSemaphore(ctx, "pool", 2, 5*time.Second, client.LockOptions{}))(t)
	if b.FencingToken <= a.FencingToken {
		t.Fatalf("fencing tokens %d then %d", a.FencingToken, b.FencingToken)
	}
	if _, err := locks.AcquireSemaphore(ctx, "pool", 2, time.Second, client.LockOptions{}); !errors.Is(err, client.ErrSemaphoreFull) {
		t.Fatalf("a full semaphore answered %v", err)
	}
	if _, err := locks.AcquireSemaphore(ctx, "pool", 3, time.Second, client.LockOptions{}); !errors.Is(err, &client.Error{Reason: "SEMAPHORE_LIMIT_MISMATCH"}) {
		t.Fatalf("another limit answered %v", err)
	}
	if err := locks.ExtendSemaphore(ctx, a, time.Minute); err != nil {
		t.Fatal(err)
	}
	if state := must(locks.InspectSemaphore(ctx, "pool"))(t); len(state.GetHolders()) != 2 || state.GetLimit() != 2 {
		t.Fatalf("InspectSemaphore answered %v", state)
	}
	if err := locks.ReleaseSemaphore(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := locks.ReleaseSemaphore(ctx, a); !errors.Is(err, client.ErrLockNotOwned) {
		t.Fatalf("a second ReleaseSemaphore answered %v", err)
	}
	must(locks.AcquireSemaphore(ctx, "pool", 2, time.Second, client.LockOptions{}))(t)
}

func TestHoldKeepsTheLockAndSignalsLoss(t *testing.T) {
	c, ctx := dial(t)
	locks := c.Locks()
	held, err := locks.Hold(ctx, "leader", time.Second, client.LockOptions{RenewInterval: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	firstExpiry := held.ExpireTime()
	// Readers on many goroutines while the server renews: the handle is goroutine-safe.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				_ = held.ExpireTime()
				_ = held.Err()
				time.Sleep(30 * time.Millisecond)
			}
		}()
	}
	wg.Wait() // 1.5 s: longer than the TTL, so it was renewed
	if _, err := locks.Acquire(ctx, "leader", time.Second, client.LockOptions{}); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("the held lock was free after its TTL: %v", err)
	}
	if !held.ExpireTime().After(firstExpiry) {
		t.Fatal("no renewal was recorded")
	}
	select {
	case <-held.Lost():
		t.Fatalf("lost while held: %v", held.Err())
	default:
	}
	// Someone wipes the lock (here: a namespace flush); the next renewal finds it gone.
	if _, err := c.Admin().FlushNamespace(ctx, namespaceOf(t, c), false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the loss was not signalled")
	}
	if !errors.Is(held.Err(), client.ErrLeaseLost) {
		t.Fatalf("Err after the loss is %v", held.Err())
	}
	if err := held.Release(ctx); !errors.Is(err, client.ErrLeaseLost) {
		t.Fatalf("Release after the loss answered %v", err)
	}

	// Concurrent Release calls release once; the lock is free afterwards.
	held = must(locks.Hold(ctx, "leader", 5*time.Second, client.LockOptions{}))(t)
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- held.Release(ctx) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Release answered %v", err)
		}
	}
	select {
	case <-held.Lost():
		t.Fatal("Lost closed on Release")
	default:
	}
	lease := must(locks.Acquire(ctx, "leader", time.Second, client.LockOptions{}))(t)
	if lease.FencingToken <= held.FencingToken() {
		t.Fatalf("fencing token %d after %d", lease.FencingToken, held.FencingToken())
	}
	if err := locks.Release(ctx, lease); err != nil {
		t.Fatal(err)
	}

	// Ending the context ends the hold: Lost closes and the server frees the lock.
	holdCtx, cancel := context.WithCancel(ctx)
	held = must(locks.Hold(holdCtx, "leader", 5*time.Second, client.LockOptions{}))(t)
	cancel()
	<-held.Lost()
	if !errors.Is(held.Err(), context.Canceled) {
		t.Fatalf("Err after cancel is %v", held.Err())
	}
	must(locks.Acquire(ctx, "leader", 30*time.Second, client.LockOptions{Wait: 5 * time.Second}))(t)

	// Hold on a held lock waits, then answers ErrLockHeld.
	if _, err := locks.Hold(ctx, "leader", time.Second, client.LockOptions{Wait: 50 * time.Millisecond}); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("Hold on a held lock answered %v", err)
	}
}

func TestRateLimits(t *testing.T) {
	c, ctx := dial(t)
	limits := c.RateLimits()
	window := client.Limit{Algorithm: client.SlidingWindowLog, Limit: 3, Period: time.Hour} // exact: no window ends mid-test
	a, b := client.Inline("{t}a", window), client.Inline("{t}b", client.Limit{Algorithm: client.GCRA, Limit: 1, Period: time.Hour})
	if d := must(limits.CheckHits(ctx, a, 2))(t); !d.Allowed || d.Remaining != 1 || d.Limit != 3 {
		t.Fatalf("CheckHits answered %+v", d)
	}
	allowed, decisions, err := limits.CheckMany(ctx, true, a, a)
	if err != nil || allowed || len(decisions) != 2 {
		t.Fatalf("an all-or-nothing CheckMany over the limit answered %v %v %v", allowed, decisions, err)
	}
	if d := must(limits.Peek(ctx, a))(t); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("all-or-nothing consumed: %+v", d)
	}
	allowed, decisions, err = limits.CheckMany(ctx, false, a, b, b)
	if err != nil || allowed || !decisions[0].Allowed || !decisions[1].Allowed || decisions[2].Allowed {
		t.Fatalf("an independent CheckMany answered %v %+v %v", allowed, decisions, err)
	}
	if _, _, err := limits.CheckMany(ctx, true, client.Inline("x", window), client.Inline("y", window)); !errors.Is(err, client.ErrCrossSlot) {
		t.Fatalf("an all-or-nothing CheckMany over two slots answered %v", err)
	}
	if cleared := must(limits.Reset(ctx, a, b, client.Inline("{t}never", window)))(t); cleared != 2 {
		t.Fatalf("Reset cleared %d, want 2", cleared)
	}
	if d := must(limits.Peek(ctx, a))(t); d.Remaining != 3 {
		t.Fatalf("after Reset: %+v", d)
	}
	if _, err := limits.Check(ctx, client.Policy("no-such-policy", "k")); !errors.Is(err, client.ErrPolicyNotFound) || !errors.Is(err, &client.Error{Code: codes.NotFound}) {
		t.Fatalf("an unknown policy answered %v", err)
	}
	if _, err := limits.Check(ctx, client.Descriptor("no-such-domain", "remote_address", "10.0.0.1")); !errors.Is(err, client.ErrPolicyNotFound) {
		t.Fatalf("an unmatched descriptor answered %v", err)
	}
	if _, err := limits.Check(ctx, client.Inline("k", client.Limit{Limit: 0, Period: time.Second})); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("a zero limit answered %v", err)
	}
	if policies := must(limits.Policies(ctx, ""))(t); len(policies) != 0 {
		t.Fatalf("the test server has no policies, listed %v", policies)
	}
}

func TestEventStreams(t *testing.T) {
	c, ctx := dial(t)
	events := c.Events()
	var ids []string
	for i := range 3 {
		ids = append(ids, must(events.Append(ctx, "s", &client.Event{Type: "t", Payload: []byte(strconv.Itoa(i))}, 0))(t))
	}
	if got := must(events.Read(ctx, "s", ids[0], 10, 0))(t); len(got) != 2 || got[0].GetId() != ids[1] {
		t.Fatalf("Read answered %v", got)
	}
	page, next, err := events.Range(ctx, "s", "", "", true, 2, "")
	if err != nil || len(page) != 2 || page[0].GetId() != ids[2] || next == "" {
		t.Fatalf("Range answered %v %q %v", page, next, err)
	}
	if created := must(events.CreateGroup(ctx, "s", "g", client.GroupOptions{StartID: "0", MaxDeliveries: 1}))(t); !created {
		t.Fatal("CreateGroup did not create")
	}
	if _, err := events.CreateGroup(ctx, "s", "g", client.GroupOptions{}); !errors.Is(err, client.ErrGroupExists) {
		t.Fatalf("a second CreateGroup answered %v", err)
	}
	if created := must(events.CreateGroup(ctx, "s", "g", client.GroupOptions{IfNotExists: true}))(t); created {
		t.Fatal("CreateGroup IfNotExists created again")
	}
	if _, err := events.CreateGroup(ctx, "nope", "g", client.GroupOptions{}); !errors.Is(err, client.ErrStreamNotFound) {
		t.Fatalf("a group on a missing stream answered %v", err)
	}
	// Take all three without acking; ack one.
	var got []*client.Delivery
	consumeCtx, stop := context.WithTimeout(ctx, 5*time.Second)
	for delivery, err := range events.Consume(consumeCtx, "s", "g", "c1", client.ConsumeOptions{BatchSize: 10}) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, delivery)
		if len(got) == 3 {
			break
		}
	}
	stop()
	if got[0].GetDeliveryCount() != 1 || string(got[2].GetPayload()) != "2" {
		t.Fatalf("Consume delivered %v", got)
	}
	if err := got[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if acked := must(events.Ack(ctx, "s", "g", ids[0]))(t); acked != 0 {
		t.Fatalf("a second Ack counted %d", acked)
	}
	if pending := must(events.Pending(ctx, "s", "g"))(t); pending.GetCount() != 2 {
		t.Fatalf("Pending answered %v", pending)
	}
	if list := must(events.ListPending(ctx, &eventbusv1.ListPendingRequest{Stream: "s", Group: "g"}))(t); len(list.GetEntries()) != 2 {
		t.Fatalf("ListPending answered %v", list)
	}
	// Delivered once already with max_deliveries 1: claiming dead-letters them.
	time.Sleep(5 * time.Millisecond)
	claimed := must(events.Claim(ctx, "s", "g", "c2", time.Millisecond, ""))(t)
	if len(claimed.Deliveries) != 0 || len(claimed.DeadLettered) != 2 {
		t.Fatalf("Claim answered %+v", claimed)
	}
	dead := must(events.DeadLetters(ctx, "s", "", 10))(t)
	if len(dead) != 2 || dead[0].GetDeadLetter().GetOriginalId() != ids[1] || dead[0].GetDeadLetter().GetGroup() != "g" {
		t.Fatalf("DeadLetters answered %v", dead)
	}
	info := must(events.Info(ctx, "s", true))(t)
	if info.GetLength() != 3 || info.GetDeadLetterLength() != 2 || len(info.GetGroups()) != 1 || len(info.GetGroups()[0].GetConsumers()) == 0 {
		t.Fatalf("Info answered %v", info)
	}
	if trimmed := must(events.Trim(ctx, "s", 1, false))(t); trimmed != 2 {
		t.Fatalf("Trim removed %d", trimmed)
	}
	if trimmed := must(events.TrimBefore(ctx, "s", "99999999999999-0", false))(t); trimmed != 1 {
		t.Fatalf("TrimBefore removed %d", trimmed)
	}
	if deleted := must(events.DeleteGroup(ctx, "s", "g"))(t); !deleted {
		t.Fatal("DeleteGroup did not delete")
	}
	for _, err := range events.Consume(ctx, "s", "g", "c1", client.ConsumeOptions{}) {
		if !errors.Is(err, client.ErrGroupNotFound) {
			t.Fatalf("Consume of a deleted group yielded %v", err)
		}
		break
	}
	if _, err := events.Info(ctx, "nope", false); !errors.Is(err, client.ErrStreamNotFound) {
		t.Fatalf("Info of a missing stream answered %v", err)
	}
}

func TestClaimTakesOverIdleEvents(t *testing.T) {
	c, ctx := dial(t)
	events := c.Events()
	id := must(events.Append(ctx, "jobs", &client.Event{Payload: []byte("job")}, 0))(t)
	must(events.CreateGroup(ctx, "jobs", "workers", client.GroupOptions{StartID: "0"}))(t)
	consumeCtx, stop := context.WithTimeout(ctx, 5*time.Second)
	for _, err := range events.Consume(consumeCtx, "jobs", "workers", "crashed", client.ConsumeOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		break // "crash" without acking
	}
	stop()
	time.Sleep(5 * time.Millisecond)
	claimed := must(events.Claim(ctx, "jobs", "workers", "rescuer", time.Millisecond, "", id))(t)
	if len(claimed.Deliveries) != 1 || claimed.Deliveries[0].GetDeliveryCount() != 2 {
		t.Fatalf("Claim answered %+v", claimed)
	}
	if err := claimed.Deliveries[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if pending := must(events.Pending(ctx, "jobs", "workers"))(t); pending.GetCount() != 0 {
		t.Fatalf("still pending after the rescuer's Ack: %v", pending)
	}
}

func TestSubscribeFailsOnBadInput(t *testing.T) {
	c, ctx := dial(t)
	if _, err := c.Events().Subscribe(ctx, nil, nil); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("Subscribe without topics answered %v", err)
	}
	if _, err := c.Events().Publish(ctx, "", &client.Event{}); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("Publish without topic answered %v", err)
	}
}

func TestAdmin(t *testing.T) {
	c, ctx := dial(t)
	admin := c.Admin()
	must(c.Set(ctx, "big", bytes.Repeat([]byte("x"), 10000)))(t)
	info := must(admin.ServerInfo(ctx))(t)
	if info.GetRedisVersion() == "" || len(info.GetNodes()) == 0 {
		t.Fatalf("ServerInfo answered %v", info)
	}
	if stats := must(admin.ServiceStats(ctx, nil))(t); len(stats.GetMethods()) == 0 {
		t.Fatalf("ServiceStats answered %v", stats)
	}
	must(admin.SlowLog(ctx, nil))(t)
	if n := must(admin.ResetSlowLog(ctx))(t); n != 1 {
		t.Fatalf("ResetSlowLog reset %d nodes", n)
	}
	if nodes := must(admin.MemoryStats(ctx))(t); len(nodes) != 1 {
		t.Fatalf("MemoryStats answered %v", nodes)
	}
	if used, found, err := admin.KeyMemoryUsage(ctx, "big"); err != nil || !found || used < 10000 {
		t.Fatalf("KeyMemoryUsage answered %d %v %v", used, found, err)
	}
	if big := must(admin.BigKeys(ctx, nil))(t); len(big.GetKeys()) != 1 || big.GetKeys()[0].GetKey() != "big" {
		t.Fatalf("BigKeys answered %v", big)
	}
	if clients := must(admin.Clients(ctx, nil))(t); len(clients.GetClients()) == 0 {
		t.Fatalf("Clients answered %v", clients)
	}
	config := must(admin.Config(ctx, "maxmemory-policy"))(t)
	if len(config.GetParameters()) != 1 || len(config.GetWhitelist()) == 0 {
		t.Fatalf("Config answered %v", config)
	}
	previous := config.GetParameters()[0].GetValues()[0].GetValue()
	if nodes := must(admin.SetConfig(ctx, map[string]string{"maxmemory-policy": previous}))(t); len(nodes) != 1 {
		t.Fatalf("SetConfig answered %v", nodes)
	}
	if _, err := admin.Config(ctx, "requirepass"); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("a parameter outside the whitelist answered %v", err)
	}
	if _, err := admin.FlushNamespace(ctx, "not-this-one", false); !errors.Is(err, client.ErrConfirmationFailed) {
		t.Fatalf("a wrong confirmation answered %v", err)
	}
	counted := must(admin.FlushNamespace(ctx, admin.Namespace(), true))(t)
	if keys := must(admin.ScanKeys(ctx, "*"))(t); len(keys) != 1 || counted < 1 {
		t.Fatalf("a dry run counted %d and left %v", counted, keys)
	}
	if n := must(admin.FlushNamespace(ctx, admin.Namespace(), false))(t); n != counted {
		t.Fatalf("FlushNamespace deleted %d, the dry run counted %d", n, counted)
	}
	if keys := must(admin.ScanKeys(ctx, "*"))(t); len(keys) != 0 {
		t.Fatalf("keys left after the flush: %v", keys)
	}
}

func TestRetryPolicyNamesRealIdempotentMethods(t *testing.T) {
	for service, methods := range client.IdempotentMethods {
		descriptor, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
		if err != nil {
			t.Fatalf("%s: %v", service, err)
		}
		for _, method := range methods {
			if descriptor.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method)) == nil {
				t.Errorf("%s has no method %s", service, method)
			}
			if method == "Set" || method == "Increment" || method == "Acquire" || method == "Release" || method == "Append" || method == "Check" {
				t.Errorf("%s/%s is not idempotent and must not be retried", service, method)
			}
		}
	}
}

func TestRequestIDMethodsTakeARequestID(t *testing.T) {
	for service, methods := range client.RequestIDMethods {
		descriptor := must(protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service)))(t)
		for _, method := range methods {
			rpc := descriptor.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method))
			if rpc == nil || rpc.Input().Fields().ByName("request_id") == nil {
				t.Errorf("%s/%s takes no request_id", service, method)
			}
		}
	}
}

// The wrappers of RequestIDMethods send a fresh request_id on every call, so a retry
// (the same request again) is applied once, and two calls are two.
func TestWritesCarryAFreshRequestID(t *testing.T) {
	sent := map[string][]string{}
	var mu sync.Mutex
	record := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		message := req.(proto.Message).ProtoReflect()
		if field := message.Descriptor().Fields().ByName("request_id"); field != nil {
			mu.Lock()
			sent[method] = append(sent[method], message.Get(field).String())
			mu.Unlock()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	c := must(client.Dial(serverAddr, fmt.Sprintf("go-request-id-%d", time.Now().UnixNano()), record))(t)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		must(c.Increment(ctx, "n", 1, 0))(t)
		must(c.IncrementFloat(ctx, "f", 1, 0))(t)
		must(c.HashIncrement(ctx, "h", "n", 1, client.CollectionTTL{}))(t)
		must(c.ListPush(ctx, "l", client.Right, [][]byte{[]byte("x")}, 0, client.CollectionTTL{}))(t)
		must(c.SortedSetIncrement(ctx, "z", []byte("m"), 1, client.CollectionTTL{}))(t)
		must(c.Events().Publish(ctx, "t", &client.Event{}))(t)
		must(c.Events().Append(ctx, "s", &client.Event{}, 0))(t)
	}
	if n := must(c.Increment(ctx, "n", 0, 0))(t); n != 2 {
		t.Fatalf("two Increments by 1 counted %d", n)
	}
	calls := 0
	for service, methods := range client.RequestIDMethods {
		for _, method := range methods {
			ids := sent["/"+service+"/"+method]
			calls += len(ids)
			seen := map[string]bool{}
			for _, id := range ids {
				if id == "" || seen[id] {
					t.Errorf("%s sent request ids %q: want fresh, non-empty ones", method, ids)
				}
				seen[id] = true
			}
		}
	}
	if calls < 14 {
		t.Fatalf("recorded %d calls with a request_id, want at least 14", calls)
	}
}

func TestCredentialNeedsTLS(t *testing.T) {
	if _, err := client.Dial(serverAddr, "ns", client.WithToken("secret")); err == nil {
		t.Fatal("Dial sent a token over plaintext")
	}
	c, err := client.Dial(serverAddr, "ns", client.AllowPlaintextToken(func(context.Context) (string, error) { return "", errors.New("vault down") }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Get(context.Background(), "k")
	if !errors.Is(err, client.ErrUnauthenticated) || !strings.Contains(err.Error(), "vault down") {
		t.Fatalf("a failing token source answered %v", err)
	}
	if _, err := client.WithTLSFiles("/nonexistent/ca.pem", "", ""); err == nil {
		t.Fatal("WithTLSFiles accepted a missing CA")
	}
	if _, err := client.WithTLSFiles("", "cert.pem", ""); err == nil {
		t.Fatal("WithTLSFiles accepted a certificate without key")
	}
}

func namespaceOf(t *testing.T, c *client.Client) string {
	t.Helper()
	return c.Admin().Namespace()
}

// sameNamespace is a second connection in c's namespace.
func sameNamespace(t *testing.T, c *client.Client) *client.Client {
	t.Helper()
	other, err := client.Dial(serverAddr, namespaceOf(t, c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	return other
}

// RESOURCE_EXHAUSTED with a RetryInfo (an overloaded server or a tenant's quota) is
// ErrRateLimited and says when to retry. Built here: the test server has no quota.
func TestRateLimitedErrorCarriesRetryAfter(t *testing.T) {
	st := must(status.New(codes.ResourceExhausted, "slow down").WithDetails(
		&errdetails.ErrorInfo{Reason: "QUOTA_EXCEEDED", Domain: "cachet.dev"},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	))(t)
	err := client.AsError(st.Err())
	if !errors.Is(err, client.ErrRateLimited) || err.RetryAfter != 1500*time.Millisecond || err.Reason != "QUOTA_EXCEEDED" {
		t.Fatalf("AsError answered %+v", err)
	}
	if overloaded := client.AsError(status.Error(codes.ResourceExhausted, "no retry info")); errors.Is(overloaded, client.ErrRateLimited) {
		t.Fatal("RESOURCE_EXHAUSTED without RetryInfo matched ErrRateLimited")
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("status.Code of an *Error is %v", status.Code(err))
	}
}
