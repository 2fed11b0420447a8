package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
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
