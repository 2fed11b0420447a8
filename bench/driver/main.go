// Command driver is the bench load generator for what ghz cannot drive: lock
// Acquire+Release pairs (two dependent calls) and Session streams (many requests in
// flight on one stream). It runs for a fixed duration and prints one JSON object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
	lockv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/lock/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

type report struct {
	Mode        string  `json:"mode"`
	Concurrency int     `json:"concurrency"`
	Calls       int     `json:"calls"`
	Errors      int64   `json:"errors"`
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	// Session messages sent: Calls / Messages is how many operations one carried.
	Messages int `json:"messages,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return float64(sorted[i]) / float64(time.Millisecond)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "cachet address")
	mode := flag.String("mode", "lockpair", "lockpair, get or session")
	concurrency := flag.Int("c", 1, "workers (lockpair, get) or requests in flight (session)")
	duration := flag.Duration("duration", 3*time.Second, "how long to run")
	namespace := flag.String("namespace", "bench", "cachet-namespace metadata")
	key := flag.String("key", "k", "key a session or get reads")
	pack := flag.Int("pack", 256, "most operations one Session message carries (1: one each)")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "cachet-namespace", *namespace)

	var latencies []time.Duration
	var errors int64
	var messages int
	start := time.Now()
	switch *mode {
	case "lockpair":
		latencies, errors = lockPairs(ctx, lockv1.NewLockServiceClient(conn), *concurrency, *duration)
	case "get":
		latencies, errors = gets(ctx, cachev1.NewCacheServiceClient(conn), *key, *concurrency, *duration)
	case "session":
		latencies, errors, messages, err = session(ctx, cachev1.NewCacheServiceClient(conn), *key, *concurrency, *pack, *duration)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
	elapsed := time.Since(start).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	out := report{
		Mode: *mode, Concurrency: *concurrency, Calls: len(latencies), Errors: errors,
		Seconds: elapsed, RPS: float64(len(latencies)) / elapsed,
		P50Ms: percentile(latencies, 0.50), P99Ms: percentile(latencies, 0.99), Messages: messages,
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	if errors > 0 {
		os.Exit(3)
	}
}

// lockPairs: each worker acquires its own lock and releases it, again and again; one
// latency is one Acquire+Release pair.
func lockPairs(ctx context.Context, client lockv1.LockServiceClient, workers int, duration time.Duration) ([]time.Duration, int64) {
	return perWorker(workers, duration, func(w int) func() error {
		name := fmt.Sprintf("bench-lock-%d", w)
		return func() error {
			grant, err := client.Acquire(ctx, &lockv1.AcquireRequest{Name: name, Ttl: durationpb.New(10 * time.Second)})
			if err != nil {
				return err
			}
			_, err = client.Release(ctx, &lockv1.ReleaseRequest{Name: name, OwnerToken: grant.OwnerToken})
			return err
		}
	})
}

// gets: each worker reads `key` with unary Gets, one after another: the lock pairs'
// load pattern, so lock RPCs and Gets are compared from the same client.
func gets(ctx context.Context, client cachev1.CacheServiceClient, key string, workers int, duration time.Duration) ([]time.Duration, int64) {
	return perWorker(workers, duration, func(int) func() error {
		return func() error {
			_, err := client.Get(ctx, &cachev1.GetRequest{Key: key})
			return err
		}
	})
}

// perWorker runs `workers` goroutines until `duration` has passed, each calling the
// function its `call` gives it again and again; one latency is one call of it.
func perWorker(workers int, duration time.Duration, call func(worker int) func() error) ([]time.Duration, int64) {
	deadline := time.Now().Add(duration)
	var mu sync.Mutex
	var all []time.Duration
	var errors int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(once func() error) {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				began := time.Now()
				if err := once(); err != nil {
					atomic.AddInt64(&errors, 1)
					continue
				}
				mine = append(mine, time.Since(began))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}(call(w))
	}
	wg.Wait()
	return all, errors
}

// session: one Session stream with `window` Get requests in flight; each answer frees a
// slot for the next request. What is ready at once goes out in one message, at most
// `pack` operations packed (1: one SessionRequest per operation), as the clients send.
// Latency is from Send to the matching answer.
func session(ctx context.Context, client cachev1.CacheServiceClient, key string, window, pack int, duration time.Duration) ([]time.Duration, int64, int, error) {
	stream, err := client.Session(ctx)
	if err != nil {
		return nil, 0, 0, err
	}
	messages := 0
	slots := make(chan struct{}, window)
	var mu sync.Mutex
	sent := map[uint64]time.Time{}
	var latencies []time.Duration
	var errors int64
	done := make(chan error, 1)
	answered := func(id uint64, result *cachev1.BatchResult) {
		latencies = append(latencies, time.Since(sent[id]))
		delete(sent, id)
		if result.GetStatus().GetCode() != 0 {
			atomic.AddInt64(&errors, 1)
		}
	}
	go func() {
		for {
			response, err := stream.Recv()
			if err != nil {
				done <- err
				return
			}
			mu.Lock()
			freed := len(response.Answers)
			if freed == 0 {
				answered(response.Id, response.Result)
				freed = 1
			}
			for _, answer := range response.Answers {
				answered(answer.Id, answer.Result)
			}
			mu.Unlock()
			for ; freed > 0; freed-- {
				<-slots
			}
		}
	}()
	op := &cachev1.BatchOperation{Operation: &cachev1.BatchOperation_Get{Get: &cachev1.GetRequest{Key: key}}}
	deadline := time.Now().Add(duration)
	id := uint64(0)
	for time.Now().Before(deadline) {
		slots <- struct{}{} // at least one, waiting if none is free
		n := 1
	more:
		for n < pack {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		var request *cachev1.SessionRequest
		mu.Lock()
		now := time.Now()
		if pack == 1 {
			id++
			sent[id] = now
			request = &cachev1.SessionRequest{Id: id, Operation: op}
		} else {
			operations := make([]*cachev1.SessionOperation, n)
			for i := range operations {
				id++
				sent[id] = now
				operations[i] = &cachev1.SessionOperation{Id: id, Operation: op}
			}
			request = &cachev1.SessionRequest{Operations: operations}
		}
		mu.Unlock()
		if err := stream.Send(request); err != nil {
			return nil, errors, messages, err
		}
		messages++
	}
	if err := stream.CloseSend(); err != nil {
		return nil, errors, messages, err
	}
	if err := <-done; err != nil && err != io.EOF {
		return latencies, errors, messages, err
	}
	return latencies, errors, messages, nil
}
