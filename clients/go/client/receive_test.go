package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachet-dev/cachet/clients/go/client"
)

// grpcDefaultReceiveLimit is gRPC's own receive limit, which the client lifts.
const grpcDefaultReceiveLimit = 4 << 20

// setSixMebibytes writes six distinct 1 MiB values (the server's largest value), one
// Set each, and answers their keys and values.
func setSixMebibytes(ctx context.Context, t *testing.T, c *client.Client) ([]string, map[string][]byte) {
	t.Helper()
	keys := make([]string, 6)
	values := make(map[string][]byte, len(keys))
	for i := range keys {
		keys[i] = "big:" + strconv.Itoa(i)
		values[keys[i]] = make([]byte, 1<<20)
		_, _ = rand.Read(values[keys[i]])
		must(c.Set(ctx, keys[i], values[keys[i]]))(t)
	}
	return keys, values
}

func TestGetManyAnswerOfSixMebibytesArrivesIntact(t *testing.T) {
	c, ctx := dial(t)
	keys, values := setSixMebibytes(ctx, t, c)
	got := must(c.GetMany(ctx, keys...))(t)
	if len(got) != len(keys) {
		t.Fatalf("GetMany of %d keys answered %d values", len(keys), len(got))
	}
	for i, value := range got {
		if value == nil || !bytes.Equal(value.Data, values[keys[i]]) {
			t.Fatalf("%s did not come back intact from a 6 MiB GetMany", keys[i])
		}
	}
}

func TestDialOptionsCanCapTheReceiveSizeAgain(t *testing.T) {
	_, ctx := dial(t)
	namespace := fmt.Sprintf("go-capped-%d-%d", time.Now().UnixNano(), namespaces.Add(1))
	c := must(client.Dial(serverAddr, namespace,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(grpcDefaultReceiveLimit))))(t)
	defer c.Close()
	keys, values := setSixMebibytes(ctx, t, c)
	_, err := c.GetMany(ctx, keys...)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 6 MiB GetMany under a 4 MiB cap answered %v, want RESOURCE_EXHAUSTED", err)
	}
	one := must(c.GetMany(ctx, keys[0]))(t)
	if len(one) != 1 || one[0] == nil || !bytes.Equal(one[0].Data, values[keys[0]]) {
		t.Fatal("a 1 MiB GetMany under a 4 MiB cap did not come back intact")
	}
}
