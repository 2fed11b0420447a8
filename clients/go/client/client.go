// Package client is a thin Go client for cachet: one gRPC connection scoped to a
// namespace, typed CacheService calls, and helpers that read the google.rpc error
// details cachet attaches to every failure.
//
//	c, err := client.Dial("localhost:50051", "shop")
//	if err != nil { ... }
//	defer c.Close()
//	version, err := c.Set(ctx, "user:1", []byte("alice"), client.WithTTL(5*time.Minute))
//	value, err := c.Get(ctx, "user:1") // nil, nil when the key is absent
//
// The generated stubs for every service are under .../clients/go/gen; build them on
// Conn() and they carry the namespace too:
//
//	locks := lockv1.NewLockServiceClient(c.Conn())
package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
)

// NamespaceMetadata is the request metadata key that scopes a call to a namespace.
const NamespaceMetadata = "cachet-namespace"

// Client is a connection to a cachet server whose calls all run in one namespace.
type Client struct {
	conn  *grpc.ClientConn
	cache cachev1.CacheServiceClient
}

// Value is a cached value and the version to pass to IfVersion for compare-and-swap.
type Value struct {
	Data    []byte
	Version uint64
}

// Dial connects to the cachet server at target (host:port) in namespace. The
// connection is plaintext unless opts bring other credentials; it is made lazily, so
// errors from an unreachable server surface on the first call.
func Dial(target, namespace string, opts ...grpc.DialOption) (*Client, error) {
	scope := metadata.Pairs(NamespaceMetadata, namespace)
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption,
		) error {
			return invoker(metadata.NewOutgoingContext(ctx, scoped(ctx, scope)), method, req, reply, cc, callOpts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc,
			cc *grpc.ClientConn, method string, streamer grpc.Streamer, callOpts ...grpc.CallOption,
		) (grpc.ClientStream, error) {
			return streamer(metadata.NewOutgoingContext(ctx, scoped(ctx, scope)), desc, cc, method, callOpts...)
		}),
	}
	conn, err := grpc.NewClient(target, append(defaults, opts...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, cache: cachev1.NewCacheServiceClient(conn)}, nil
}

// scoped adds the namespace to the call's outgoing metadata unless the caller set one.
func scoped(ctx context.Context, scope metadata.MD) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md.Get(NamespaceMetadata)) > 0 {
		return md
	}
	return metadata.Join(md, scope)
}

// Conn is the underlying connection, for the generated stubs of the other services.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Get reads key; it answers nil, nil when the key is absent.
func (c *Client) Get(ctx context.Context, key string) (*Value, error) {
	reply, err := c.cache.Get(ctx, &cachev1.GetRequest{Key: key})
	if err != nil || !reply.GetFound() {
		return nil, err
	}
	return &Value{Data: reply.GetValue(), Version: reply.GetVersion()}, nil
}

// SetOption refines a Set.
type SetOption func(*cachev1.SetRequest)

// WithTTL gives the value a time to live; without it the server's default TTL applies.
func WithTTL(ttl time.Duration) SetOption {
	return func(r *cachev1.SetRequest) { r.Ttl = durationpb.New(ttl) }
}

// IfAbsent writes only if the key does not exist (FAILED_PRECONDITION KEY_EXISTS otherwise).
func IfAbsent() SetOption {
	return func(r *cachev1.SetRequest) { r.Condition = cachev1.SetCondition_SET_CONDITION_IF_ABSENT }
}

// IfVersion writes only if the key's current version is version (compare-and-swap;
// ABORTED VERSION_MISMATCH otherwise).
func IfVersion(version uint64) SetOption {
	return func(r *cachev1.SetRequest) { r.IfVersion = &version }
}

// WithFencingToken rejects the write if a higher LockService fencing token already
// wrote the key (ABORTED FENCING_TOKEN_STALE).
func WithFencingToken(token uint64) SetOption {
	return func(r *cachev1.SetRequest) { r.FencingToken = &token }
}

// WithTags tags the value for InvalidateTags.
func WithTags(tags ...string) SetOption {
	return func(r *cachev1.SetRequest) { r.Tags = append(r.Tags, tags...) }
}

// Set writes value under key and answers its new version.
func (c *Client) Set(ctx context.Context, key string, value []byte, opts ...SetOption) (uint64, error) {
	request := &cachev1.SetRequest{Key: key, Value: value}
	for _, opt := range opts {
		opt(request)
	}
	reply, err := c.cache.Set(ctx, request)
	if err != nil {
		return 0, err
	}
	return reply.GetVersion(), nil
}

// Delete removes keys and answers how many existed.
func (c *Client) Delete(ctx context.Context, keys ...string) (int64, error) {
	reply, err := c.cache.Delete(ctx, &cachev1.DeleteRequest{Keys: keys})
	if err != nil {
		return 0, err
	}
	return reply.GetDeleted(), nil
}

// Increment adds by to the integer counter at key and answers its new value. A
// counter this call creates gets ttl, or the server's default TTL when ttl is 0.
func (c *Client) Increment(ctx context.Context, key string, by int64, ttl time.Duration) (int64, error) {
	request := &cachev1.IncrementRequest{Key: key, Delta: &cachev1.IncrementRequest_ByInt{ByInt: by}}
	if ttl != 0 {
		request.Ttl = durationpb.New(ttl)
	}
	reply, err := c.cache.Increment(ctx, request)
	if err != nil {
		return 0, err
	}
	return reply.GetIntValue(), nil
}
