// Command crosslang makes the Go side of tests/test_cross_language.py: each run makes one
// kind of call to a cachet server through this module's client and prints the answers,
// one JSON object per line, on stdout.
//
//	crosslang -target 127.0.0.1:50051 -namespace xl set -key greeting -value hello
//	crosslang -target ... -namespace xl acquire -name job -ttl 30s -wait 20s
//	crosslang -target ... -namespace xl use-up -key api -limit 3 -period 60s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cachet-dev/cachet/clients/go/client"
	ratelimitv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/ratelimit/v1"
)

func main() {
	target := flag.String("target", "", "host:port of the cachet server")
	namespace := flag.String("namespace", "default", "namespace of every call")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline of the whole run")
	flag.Parse()
	if flag.NArg() < 1 {
		fail(fmt.Errorf("usage: crosslang -target host:port [-namespace ns] set|acquire|use-up [flags]"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c, err := client.Dial(*target, *namespace)
	if err != nil {
		fail(err)
	}
	defer c.Close()

	op, args := flag.Arg(0), flag.Args()[1:]
	switch op {
	case "set":
		err = set(ctx, c, args)
	case "acquire":
		err = acquire(ctx, c, args)
	case "use-up":
		err = useUp(ctx, c, args)
	default:
		err = fmt.Errorf("unknown operation %q", op)
	}
	if err != nil {
		fail(err)
	}
}

// set writes -value under -key and prints {"version": "..."}.
func set(ctx context.Context, c *client.Client, args []string) error {
	flags := flag.NewFlagSet("set", flag.ExitOnError)
	key := flags.String("key", "", "key to write")
	value := flags.String("value", "", "value to write")
	ttl := flags.Duration("ttl", time.Minute, "time to live")
	_ = flags.Parse(args)
	version, err := c.Set(ctx, *key, []byte(*value), client.WithTTL(*ttl))
	if err != nil {
		return err
	}
	return emit(map[string]string{"version": strconv.FormatUint(version, 10)})
}

// acquire prints {"acquiring": name} once it is about to call, then the granted lease
// (after waiting up to -wait for its holder to release it).
func acquire(ctx context.Context, c *client.Client, args []string) error {
	flags := flag.NewFlagSet("acquire", flag.ExitOnError)
	name := flags.String("name", "", "lock name")
	ttl := flags.Duration("ttl", 30*time.Second, "lock TTL")
	wait := flags.Duration("wait", 0, "how long to wait for a held lock")
	_ = flags.Parse(args)
	if err := emit(map[string]string{"acquiring": *name}); err != nil {
		return err
	}
	lease, err := c.Locks().Acquire(ctx, *name, *ttl, client.LockOptions{Wait: *wait})
	if err != nil {
		return err
	}
	return emit(map[string]string{
		"fencing_token": strconv.FormatUint(lease.FencingToken, 10),
		"owner_token":   lease.OwnerToken,
	})
}

// useUp checks an inline sliding-window-log limit (no window edge can refill it between
// this run and the next reader's) until it refuses, and prints {"allowed": <checks
// admitted>} then the refusing decision's CheckResult.
func useUp(ctx context.Context, c *client.Client, args []string) error {
	flags := flag.NewFlagSet("use-up", flag.ExitOnError)
	key := flags.String("key", "", "rate-limit key")
	limit := flags.Uint64("limit", 1, "checks admitted per period")
	period := flags.Duration("period", time.Minute, "period of the limit")
	_ = flags.Parse(args)
	target := client.Inline(*key, client.Limit{
		Algorithm: ratelimitv1.Algorithm_ALGORITHM_SLIDING_WINDOW_LOG, Limit: *limit, Period: *period,
	})
	// One more check than the limit must be refused; stop there in any case.
	for allowed := uint64(0); allowed <= *limit; allowed++ {
		decision, err := c.RateLimits().Check(ctx, target)
		if err != nil {
			return err
		}
		if !decision.Allowed {
			if err := emit(map[string]uint64{"allowed": allowed}); err != nil {
				return err
			}
			return emitProto(decision.Result)
		}
	}
	return fmt.Errorf("%d checks of a limit of %d were all admitted", *limit+1, *limit)
}

func emit(value any) error {
	line, err := json.Marshal(value)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(line))
	return err
}

func emitProto(message proto.Message) error {
	line, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(message)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(line))
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "crosslang:", err)
	os.Exit(1)
}
