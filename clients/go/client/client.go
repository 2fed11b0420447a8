// Package client is the Go client for cachet: one gRPC connection scoped to a
// namespace, with typed calls for every service and typed errors.
//
//	c, err := client.Dial("localhost:50051", "shop")
//	if err != nil { ... }
//	defer c.Close()
//	version, err := c.Set(ctx, "user:1", []byte("alice"), client.WithTTL(5*time.Minute))
//	value, err := c.Get(ctx, "user:1") // nil, nil when the key is absent
//
// The cache calls are methods of Client; c.Locks(), c.RateLimits(), c.Events() and
// c.Admin() give the other services. Every call takes a context: its deadline is the
// call's deadline. Failures are *Error values (errors.As), which also match the
// sentinels (errors.Is(err, client.ErrLockHeld)) and keep answering status.Code.
//
// c.Batch(), c.Session(ctx) and c.Batcher(opts) send many cache operations for less
// than one RPC each: a known set at once, a stream for a hot client, and concurrent
// callers coalesced into Batch calls (see Operations).
//
// The generated stubs for every service are under .../clients/go/gen; build them on
// Conn() and they carry the namespace, the credential and the retry policy too:
//
//	locks := lockv1.NewLockServiceClient(c.Conn())
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	adminv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/admin/v1"
	cachev1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/cache/v1"
	eventbusv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/eventbus/v1"
	lockv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/lock/v1"
	ratelimitv1 "github.com/cachet-dev/cachet/clients/go/gen/cachet/ratelimit/v1"
)

// NamespaceMetadata is the request metadata key that scopes a call to a namespace.
const NamespaceMetadata = "cachet-namespace"

// MaxReceiveMessageBytes is the largest answer a Client accepts: math.MaxInt32, gRPC's
// own ceiling, in place of its 4 MiB default. The server bounds what it sends
// (limits.max_message_bytes, 8 MiB unless an operator raises it) and sizes GetMany,
// Batch and collection answers to fit, so a lower cap here would fail answers the
// server built for a caller who asked for them. A later
// grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(n)) caps it again.
const MaxReceiveMessageBytes = math.MaxInt32

// Client is a connection to a cachet server whose calls all run in one namespace.
// It is safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn
	cache  cachev1.CacheServiceClient
	locks  *Locks
	limits *RateLimits
	events *Events
	admin  *Admin
	near   *NearCache
}

// Dial connects to the cachet server at target (host:port) in namespace. The
// connection is plaintext unless an option (WithTLS, WithTLSFiles or any
// grpc.DialOption) brings other transport credentials; it is made lazily, so errors
// from an unreachable server surface on the first call. Idempotent calls are retried
// on UNAVAILABLE through the gRPC service config (RetryServiceConfig); a later
// grpc.WithDefaultServiceConfig replaces that policy. Answers of any size are accepted
// (MaxReceiveMessageBytes).
func Dial(target, namespace string, opts ...grpc.DialOption) (*Client, error) {
	scope := metadata.Pairs(NamespaceMetadata, namespace)
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(RetryServiceConfig),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxReceiveMessageBytes)),
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
	return &Client{
		conn:   conn,
		cache:  cachev1.NewCacheServiceClient(conn),
		locks:  &Locks{stub: lockv1.NewLockServiceClient(conn)},
		limits: &RateLimits{stub: ratelimitv1.NewRateLimitServiceClient(conn)},
		events: &Events{stub: eventbusv1.NewEventBusServiceClient(conn)},
		admin:  &Admin{stub: adminv1.NewAdminServiceClient(conn), namespace: namespace},
	}, nil
}

// scoped adds the namespace to the call's outgoing metadata unless the caller set one.
func scoped(ctx context.Context, scope metadata.MD) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md.Get(NamespaceMetadata)) > 0 {
		return md
	}
	return metadata.Join(md, scope)
}

// Conn is the underlying connection, for the generated stubs.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error {
	if c.near != nil {
		c.near.Close()
	}
	return c.conn.Close()
}

// EnableNearCache makes Get and GetMany serve from a local near-cache kept in step
// with the server's WatchInvalidations stream (see NearCache and docs/near-cache.md):
// never staler than the stream's delay, and never served while the stream is not
// synced. Call it once, before the client is shared; NearCache() reports its counters.
func (c *Client) EnableNearCache(opts NearCacheOptions) error {
	if c.near != nil {
		return errors.New("the near-cache is already enabled")
	}
	near, err := NewNearCache(c.cache, opts)
	if err != nil {
		return err
	}
	c.near = near
	return nil
}

// NearCache is the near-cache EnableNearCache made, nil if there is none.
func (c *Client) NearCache() *NearCache { return c.near }

// Locks is LockService: locks, held locks and semaphores.
func (c *Client) Locks() *Locks { return c.locks }

// RateLimits is RateLimitService.
func (c *Client) RateLimits() *RateLimits { return c.limits }

// Events is EventBusService: pub/sub and durable streams.
func (c *Client) Events() *Events { return c.events }

// Admin is AdminService (the admin role when auth is on).
func (c *Client) Admin() *Admin { return c.admin }

// WithTLS makes the connection use TLS with config (nil: the system roots). Set
// config.Certificates for mutual TLS.
func WithTLS(config *tls.Config) grpc.DialOption {
	if config == nil {
		config = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config))
}

// WithTLSFiles makes the connection use TLS trusting the PEM CA bundle at caFile
// (empty: the system roots) and, when certFile and keyFile are given, presenting
// that client certificate (mutual TLS).
func WithTLSFiles(caFile, certFile, keyFile string) (grpc.DialOption, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cachet TLS CA: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cachet TLS CA: no PEM certificate in %s", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("cachet TLS: a client certificate needs both certFile and keyFile")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("cachet TLS client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return WithTLS(config), nil
}

// TokenSource answers the credential to send on a call; it is called once per call
// (unary or stream), so it can cache a token and refresh it when it nears expiry.
type TokenSource func(ctx context.Context) (string, error)

// WithToken sends token as `authorization: Bearer <token>` on every call. A
// credential needs TLS (Dial fails otherwise) unless AllowPlaintextToken is given.
func WithToken(token string) grpc.DialOption {
	return WithTokenSource(func(context.Context) (string, error) { return token, nil })
}

// WithTokenSource sends the token source's answer as `authorization: Bearer <token>`
// on every call. A credential needs TLS (Dial fails otherwise) unless
// AllowPlaintextToken is given.
func WithTokenSource(source TokenSource) grpc.DialOption {
	return grpc.WithPerRPCCredentials(bearer{source: source, requireTLS: true})
}

// AllowPlaintextToken is WithTokenSource for a plaintext connection, for a server
// reached over loopback or a sidecar only: anyone on the path can read the token.
func AllowPlaintextToken(source TokenSource) grpc.DialOption {
	return grpc.WithPerRPCCredentials(bearer{source: source})
}

type bearer struct {
	source     TokenSource
	requireTLS bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.source(ctx)
	if err != nil {
		// A status error is what grpc-go answers the call with; anything else would
		// become UNAVAILABLE and be retried as if the server were down.
		return nil, status.Errorf(codes.Unauthenticated, "cachet credential: %v", err)
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.requireTLS }

// WithDefaultTimeout gives every unary call whose context has no deadline this one,
// so a forgotten deadline cannot hang a caller. Streams are left alone: they are
// meant to stay open.
func WithDefaultTimeout(timeout time.Duration) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption,
	) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, callOpts...)
	})
}
