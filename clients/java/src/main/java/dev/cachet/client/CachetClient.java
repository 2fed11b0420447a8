package dev.cachet.client;

import io.grpc.CallCredentials;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.CompositeChannelCredentials;
import io.grpc.ForwardingClientCall;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import java.util.regex.Pattern;

/**
 * One channel to a cachet server, scoped to a namespace, with a typed client per service.
 *
 * <pre>{@code
 * try (CachetClient client = CachetClient.builder().target("localhost:50051").namespace("shop").build()) {
 *   long version = client.cache().set("user:1", "alice".getBytes(UTF_8));
 *   Optional<CachedValue> value = client.cache().get("user:1");
 * }
 * }</pre>
 *
 * <p>Every call, unary and streaming, carries metadata {@code cachet-namespace} and, when
 * credentials are set, {@code authorization: Bearer <token>}. Unary calls get the default deadline
 * (5 s unless {@link Builder#defaultDeadline} says otherwise); each sub-client's {@code
 * withDeadline} gives another one. Failures are {@link CachetException}s. A client is thread-safe;
 * share one per server and namespace, and close it at the end.
 */
public final class CachetClient implements AutoCloseable {
  /** Request metadata naming the namespace every call is scoped to. */
  public static final Metadata.Key<String> NAMESPACE =
      Metadata.Key.of("cachet-namespace", Metadata.ASCII_STRING_MARSHALLER);

  /** Request metadata carrying the credential. */
  public static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  /**
   * The largest answer a client accepts unless {@link Builder#maxInboundMessageSize} says
   * otherwise: {@code Integer.MAX_VALUE}, gRPC's own ceiling, in place of its 4 MiB default. The
   * server bounds what it sends (limits.max_message_bytes, 8 MiB unless an operator raises it) and
   * sizes GetMany, Batch and collection answers to fit, so a lower cap here would fail answers the
   * server built for a caller who asked for them.
   */
  public static final int MAX_INBOUND_MESSAGE_SIZE = Integer.MAX_VALUE;

  private static final Pattern NAMESPACE_SYNTAX = Pattern.compile("[A-Za-z0-9_.-]{1,64}");

  private final ManagedChannel channel;
  private final String namespace;
  private final CacheClient cache;
  private final LockClient locks;
  private final RateLimitClient rateLimits;
  private final EventClient events;

  private CachetClient(ManagedChannel channel, String namespace, Duration deadline) {
    this.channel = channel;
    this.namespace = namespace;
    this.cache = new CacheClient(channel, deadline, null);
    this.locks = new LockClient(channel, deadline, null);
    this.rateLimits = new RateLimitClient(channel, deadline);
    this.events = new EventClient(channel, deadline, null);
  }

  public static Builder builder() {
    return new Builder();
  }

  /** CacheService: values, versions, counters, stampede-protected loads. */
  public CacheClient cache() {
    return cache;
  }

  /** LockService: locks with fencing tokens. */
  public LockClient locks() {
    return locks;
  }

  /** RateLimitService: checks against inline limits or named policies. */
  public RateLimitClient rateLimits() {
    return rateLimits;
  }

  /** EventBusService: pub/sub topics and durable streams with consumer groups. */
  public EventClient events() {
    return events;
  }

  /** The namespace every call of this client is scoped to. */
  public String namespace() {
    return namespace;
  }

  /**
   * The channel, for the generated stubs of calls the wrapper does not cover (for example {@code
   * cachet.cache.v1.CacheServiceGrpc.newBlockingStub(client.channel())}); they carry the namespace
   * and credentials too.
   */
  public Channel channel() {
    return channel;
  }

  /** Closes the channel, waiting up to 5 s for calls in flight. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException interrupted) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** Builds a {@link CachetClient}; only {@link #target} is required. */
  public static final class Builder {
    private String target;
    private String namespace = "default";
    private Supplier<String> credentials;
    private Tls tls;
    private Duration defaultDeadline = Duration.ofSeconds(5);
    private int maxAttempts = 4;
    private Duration initialBackoff = Duration.ofMillis(100);
    private int maxInboundMessageSize = MAX_INBOUND_MESSAGE_SIZE;

    private Builder() {}

    /** The server address, {@code host:port} (or any grpc-java target URI). */
    public Builder target(String target) {
      this.target = Objects.requireNonNull(target, "target");
      return this;
    }

    /**
     * The namespace of every call (letters, digits, {@code _ . -}, at most 64); default {@code
     * default}.
     */
    public Builder namespace(String namespace) {
      if (namespace == null || !NAMESPACE_SYNTAX.matcher(namespace).matches()) {
        throw new IllegalArgumentException(
            "namespace must be 1 to 64 letters, digits, '_', '.' or '-', got " + namespace);
      }
      this.namespace = namespace;
      return this;
    }

    /** A static API key or token, sent as {@code authorization: Bearer <token>}. */
    public Builder credentials(String token) {
      Objects.requireNonNull(token, "token");
      return credentials(() -> token);
    }

    /**
     * A token source asked on every call (for tokens that rotate); it may block, and runs off the
     * caller's thread. A supplier that throws fails the call with UNAUTHENTICATED.
     */
    public Builder credentials(Supplier<String> tokens) {
      this.credentials = Objects.requireNonNull(tokens, "tokens");
      return this;
    }

    /** Connect with TLS (plaintext without it). */
    public Builder tls(Tls tls) {
      this.tls = Objects.requireNonNull(tls, "tls");
      return this;
    }

    /** The deadline of unary calls without one of their own; default 5 s. */
    public Builder defaultDeadline(Duration deadline) {
      this.defaultDeadline = Calls.positive(deadline, "defaultDeadline");
      return this;
    }

    /**
     * Attempts of an idempotent read that fails with UNAVAILABLE (default 4; 1 turns retries off),
     * with exponential backoff from {@code initialBackoff} (default 100 ms). Writes are never
     * retried.
     */
    public Builder retries(int maxAttempts, Duration initialBackoff) {
      if (maxAttempts < 1) {
        throw new IllegalArgumentException("maxAttempts must be at least 1, got " + maxAttempts);
      }
      this.maxAttempts = maxAttempts;
      this.initialBackoff = Calls.positive(initialBackoff, "initialBackoff");
      return this;
    }

    /**
     * The largest answer accepted, in bytes; default {@link #MAX_INBOUND_MESSAGE_SIZE} (no cap
     * below gRPC's own). A larger answer fails with {@link ResourceExhaustedException}.
     */
    public Builder maxInboundMessageSize(int bytes) {
      if (bytes < 1) {
        throw new IllegalArgumentException("maxInboundMessageSize must be positive, got " + bytes);
      }
      this.maxInboundMessageSize = bytes;
      return this;
    }

    public CachetClient build() {
      if (target == null) {
        throw new IllegalStateException("target is required");
      }
      ChannelCredentials transport =
          tls == null ? InsecureChannelCredentials.create() : tls.channelCredentials();
      if (credentials != null) {
        transport = CompositeChannelCredentials.create(transport, new BearerToken(credentials));
      }
      ManagedChannelBuilder<?> builder =
          Grpc.newChannelBuilder(target, transport)
              .intercept(new NamespaceInterceptor(namespace))
              .maxInboundMessageSize(maxInboundMessageSize);
      if (maxAttempts > 1) {
        builder
            .defaultServiceConfig(RetryPolicy.serviceConfig(maxAttempts, initialBackoff))
            .enableRetry();
      } else {
        builder.disableRetry();
      }
      return new CachetClient(builder.build(), namespace, defaultDeadline);
    }
  }

  /** Adds {@code cachet-namespace} to every call, unary and streaming. */
  private static final class NamespaceInterceptor implements ClientInterceptor {
    private final String namespace;

    NamespaceInterceptor(String namespace) {
      this.namespace = namespace;
    }

    @Override
    public <Q, R> ClientCall<Q, R> interceptCall(
        MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
      return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
        @Override
        public void start(Listener<R> listener, Metadata headers) {
          headers.discardAll(NAMESPACE);
          headers.put(NAMESPACE, namespace);
          super.start(listener, headers);
        }
      };
    }
  }

  /** {@code authorization: Bearer <token>}, asked from the supplier on every call. */
  private static final class BearerToken extends CallCredentials {
    private final Supplier<String> tokens;

    BearerToken(Supplier<String> tokens) {
      this.tokens = tokens;
    }

    @Override
    public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
      executor.execute(
          () -> {
            String token;
            try {
              token = tokens.get();
            } catch (RuntimeException failed) {
              // The supplier's message may quote a secret: only its type travels on.
              applier.fail(
                  Status.UNAUTHENTICATED.withDescription(
                      "the credential supplier failed: " + failed.getClass().getName()));
              return;
            }
            if (token == null || token.isEmpty()) {
              applier.fail(
                  Status.UNAUTHENTICATED.withDescription("the credential supplier gave no token"));
              return;
            }
            Metadata headers = new Metadata();
            headers.put(AUTHORIZATION, "Bearer " + token);
            applier.apply(headers);
          });
    }
  }
}
