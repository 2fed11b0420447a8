package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/cachet-dev/cachet/clients/go/client"
)

// The README shows these bodies (TestReadmeShowsTheExamples checks it); go test runs
// them against the live server TestMain starts and compares their output.

func ExampleClient_GetOrSet() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-cache")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	version, _ := c.Set(ctx, "user:1", []byte("alice"), client.WithTTL(time.Minute), client.WithTags("users"))
	_, err = c.Set(ctx, "user:1", []byte("bob"), client.IfVersion(version+1))
	fmt.Println(errors.Is(err, client.ErrVersionMismatch))
	profile, _ := c.GetOrSet(ctx, "profile:1", func(context.Context) ([]byte, error) {
		return []byte("computed once"), nil // one caller of all processes computes a miss
	}, client.GetOrSetOptions{TTL: time.Minute, Tags: []string{"users"}})
	fmt.Println(string(profile))
	deleted, _ := c.InvalidateTags(ctx, "users")
	fmt.Println(deleted)
	// Output:
	// true
	// computed once
	// 2
}

func ExampleClient_Batch() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-batch")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	b := c.Batch() // one Batch RPC (one per 1,000 operations)
	b.Set("user:1", []byte("alice"), client.WithTTL(time.Minute))
	b.Set("user:2", []byte("bob"), client.WithTTL(time.Minute))
	users := []client.BatchOp[*client.Value]{b.Get("user:1"), b.Get("user:2"), b.Get("user:3")}
	tagged := b.Set("user:4", []byte("carol"), client.WithTags("users")) // refused alone: no tags in a batch
	if _, err := b.Exec(ctx); err != nil {
		log.Fatal(err) // the call itself failed: UNAVAILABLE, a deadline, ...
	}
	for _, user := range users {
		if value, err := user.Result(); value != nil { // what c.Get answers: nil, nil when absent
			fmt.Println(string(value.Data), err)
		} else {
			fmt.Println("absent", err)
		}
	}
	_, err = tagged.Result()
	fmt.Println(errors.Is(err, client.ErrInvalidArgument))
	// Output:
	// alice <nil>
	// bob <nil>
	// absent <nil>
	// true
}

func ExampleClient_Session() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-session")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s := c.Session(ctx) // one stream for every call below
	defer s.Close(ctx)  // waits for the answers still due
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			_, _ = s.Increment(ctx, "hits", int64(i), time.Minute) // many in flight, answered as they complete
		})
	}
	wg.Wait()
	hits, _ := s.Increment(ctx, "hits", 0, time.Minute)
	fmt.Println(hits)
	_, err = s.Get(ctx, "")
	fmt.Println(errors.Is(err, client.ErrInvalidArgument)) // that operation fails, the stream goes on
	// Output:
	// 45
	// true
}

func ExampleClient_Batcher() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-batcher")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	b := c.Batcher(client.BatcherOptions{}) // up to 4 Batch calls in flight; the others' calls wait and go together
	_, _ = b.Set(ctx, "user:1", []byte("alice"))
	names := make([]string, 50)
	var wg sync.WaitGroup
	for i := range names {
		wg.Go(func() {
			value, err := b.Get(ctx, "user:1") // a lone caller's call goes out at once
			if err == nil && value != nil {
				names[i] = string(value.Data)
			}
		})
	}
	wg.Wait()
	fmt.Println(names[0], names[49])
	// Output:
	// alice alice
}

func ExampleLocks_Hold() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-locks")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	held, err := c.Locks().Hold(ctx, "reindex", 10*time.Second, client.LockOptions{})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Locks().Acquire(ctx, "reindex", time.Second, client.LockOptions{})
	fmt.Println(errors.Is(err, client.ErrLockHeld))
	_, err = c.Set(ctx, "index", []byte("v2"), client.WithFencingToken(held.FencingToken()))
	fmt.Println(err, held.Release(ctx))
	lease, _ := c.Locks().Acquire(ctx, "reindex", time.Second, client.LockOptions{})
	fmt.Println(lease.FencingToken > held.FencingToken())
	// Output:
	// true
	// <nil> <nil>
	// true
}

func ExampleRateLimits_Check() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-ratelimits")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	login := client.Inline("user:42:login", client.PerMinute(2))
	for range 3 {
		decision, err := c.RateLimits().Check(ctx, login)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(decision.Allowed, decision.Remaining, decision.RetryAfter > 0)
	}
	peek, _ := c.RateLimits().Peek(ctx, login)
	fmt.Println(peek.Allowed)
	// Output:
	// true 1 false
	// true 0 false
	// false 0 true
	// false
}

func ExampleEvents_Consume() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(serverAddr, "example-events")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	events := c.Events()
	if _, err := events.CreateGroup(ctx, "orders", "billing", client.GroupOptions{StartID: "0", CreateStream: true}); err != nil {
		log.Fatal(err)
	}
	id, _ := events.Append(ctx, "orders", &client.Event{Type: "order.created", Payload: []byte(`{"id":7}`)}, 0)
	for delivery, err := range events.Consume(ctx, "orders", "billing", "worker-1", client.ConsumeOptions{}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(delivery.GetType(), delivery.GetId() == id, delivery.Ack(ctx))
		break
	}
	// Output:
	// order.created true <nil>
}

func ExampleEvents_Subscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(serverAddr, "example-pubsub")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	messages, err := c.Events().Subscribe(ctx, []string{"news"}, []string{"alerts.*"})
	if err != nil {
		log.Fatal(err)
	}
	receivers, _ := c.Events().Publish(ctx, "alerts.disk", &client.Event{Payload: []byte("90% full")})
	for message, err := range messages {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(receivers, message.GetTopic(), message.GetPattern(), string(message.GetEvent().GetPayload()))
		break
	}
	// Output:
	// 1 alerts.disk alerts.* 90% full
}

func ExampleAdmin_InspectKey() {
	ctx := context.Background()
	c, err := client.Dial(serverAddr, "example-admin")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Set(ctx, "user:1", []byte("alice"))
	info, err := c.Admin().InspectKey(ctx, "user:1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.GetFound(), info.GetType())
	keys, _ := c.Admin().ScanKeys(ctx, "user:*")
	fmt.Println(keys)
	deleted, _ := c.Admin().FlushNamespace(ctx, "example-admin", false)
	fmt.Println(deleted >= 1)
	// Output:
	// true KEY_TYPE_STRING
	// [user:1]
	// true
}
