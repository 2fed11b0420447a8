package dev.cachet.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import cachet.cache.v1.Cache;
import cachet.cache.v1.CacheServiceGrpc;
import cachet.eventbus.v1.EventBusServiceGrpc;
import cachet.eventbus.v1.Eventbus;
import com.google.protobuf.ByteString;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerCredentials;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.TlsServerCredentials;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * What the client puts on the wire, checked against a small gRPC server in this test: the metadata
 * of unary and streaming calls, which calls the retry policy repeats, and TLS. The cachet behaviour
 * itself is tested against the real server in {@link LiveServerTest}.
 */
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ClientWiringTest {
  private final Map<String, List<Metadata>> headersByMethod = new ConcurrentHashMap<>();
  private final AtomicInteger getAttempts = new AtomicInteger();
  private final AtomicInteger setAttempts = new AtomicInteger();
  private volatile int failingGets;
  private Server server;

  /** Answers Get after {@link #failingGets} UNAVAILABLE attempts; Set is always UNAVAILABLE. */
  private final class FlakyCache extends CacheServiceGrpc.CacheServiceImplBase {
    @Override
    public void get(Cache.GetRequest request, StreamObserver<Cache.GetResponse> reply) {
      if (getAttempts.incrementAndGet() <= failingGets) {
        reply.onError(Status.UNAVAILABLE.withDescription("flaky").asRuntimeException());
        return;
      }
      reply.onNext(
          Cache.GetResponse.newBuilder()
              .setFound(true)
              .setValue(ByteString.copyFromUtf8("ok"))
              .setVersion(1)
              .build());
      reply.onCompleted();
    }

    @Override
    public void set(Cache.SetRequest request, StreamObserver<Cache.SetResponse> reply) {
      setAttempts.incrementAndGet();
      reply.onError(Status.UNAVAILABLE.withDescription("flaky").asRuntimeException());
    }

    /** Overloaded, with a retry time (as cachet's errors.py sends RESOURCE_EXHAUSTED). */
    @Override
    public void increment(
        Cache.IncrementRequest request, StreamObserver<Cache.IncrementResponse> reply) {
      reply.onError(exhausted("OVERLOADED", true));
    }

    /** An answer too large: RESOURCE_EXHAUSTED without a retry time. */
    @Override
    public void getMany(Cache.GetManyRequest request, StreamObserver<Cache.GetManyResponse> reply) {
      reply.onError(exhausted("RESPONSE_TOO_LARGE", false));
    }
  }

  private static io.grpc.StatusRuntimeException exhausted(String reason, boolean withRetryInfo) {
    com.google.rpc.Status.Builder status =
        com.google.rpc.Status.newBuilder()
            .setCode(Status.Code.RESOURCE_EXHAUSTED.value())
            .setMessage(reason.toLowerCase(java.util.Locale.ROOT))
            .addDetails(
                com.google.protobuf.Any.pack(
                    com.google.rpc.ErrorInfo.newBuilder()
                        .setDomain("cachet.dev")
                        .setReason(reason)
                        .build()));
    if (withRetryInfo) {
      status.addDetails(
          com.google.protobuf.Any.pack(
              com.google.rpc.RetryInfo.newBuilder()
                  .setRetryDelay(
                      com.google.protobuf.Duration.newBuilder().setSeconds(2).setNanos(500_000_000))
                  .build()));
    }
    return io.grpc.protobuf.StatusProto.toStatusRuntimeException(status.build());
  }

  /** Confirms every subscription at once, then stays open. */
  private static final class ConfirmingEvents extends EventBusServiceGrpc.EventBusServiceImplBase {
    @Override
    public void subscribe(
        Eventbus.SubscribeRequest request, StreamObserver<Eventbus.SubscribeResponse> reply) {
      reply.onNext(
          Eventbus.SubscribeResponse.newBuilder()
              .setActive(Eventbus.SubscriptionActive.getDefaultInstance())
              .build());
    }
  }

  private final class RecordHeaders implements ServerInterceptor {
    @Override
    public <Q, R> ServerCall.Listener<Q> interceptCall(
        ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
      headersByMethod
          .computeIfAbsent(
              call.getMethodDescriptor().getBareMethodName(),
              method -> new CopyOnWriteArrayList<>())
          .add(headers);
      return next.startCall(call, headers);
    }
  }

  private String start(ServerCredentials credentials) throws IOException {
    server =
        Grpc.newServerBuilderForPort(0, credentials)
            .addService(ServerInterceptors.intercept(new FlakyCache(), new RecordHeaders()))
            .addService(ServerInterceptors.intercept(new ConfirmingEvents(), new RecordHeaders()))
            .build()
            .start();
    return "127.0.0.1:" + server.getPort();
  }

  @AfterEach
  void stop() throws InterruptedException {
    if (server != null) {
      server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  private static CachetClient.Builder client(String target) {
    return CachetClient.builder()
        .target(target)
        .namespace("wired")
        .retries(4, Duration.ofMillis(10));
  }

  @Test
  void idempotentReadsAreRetriedAndWritesAreNot() throws IOException {
    failingGets = 2;
    try (CachetClient client = client(start(InsecureServerCredentials.create())).build()) {
      assertEquals("ok", client.cache().get("k").orElseThrow().asString());
      assertEquals(3, getAttempts.get(), "two UNAVAILABLE answers, then the third attempt");

      assertThrows(UnavailableException.class, () -> client.cache().set("k", new byte[] {1}));
      assertEquals(1, setAttempts.get(), "a write is never repeated by the client");
    }
  }

  @Test
  void resourceExhaustedWithRetryInfoIsRateLimited() throws IOException {
    try (CachetClient client = client(start(InsecureServerCredentials.create())).build()) {
      RateLimitedException overloaded =
          assertThrows(RateLimitedException.class, () -> client.cache().increment("n", 1));
      assertEquals("OVERLOADED", overloaded.reason());
      assertEquals(java.util.Optional.of(Duration.ofMillis(2500)), overloaded.retryAfter());

      ResourceExhaustedException tooLarge =
          assertThrows(
              ResourceExhaustedException.class, () -> client.cache().getMany(List.of("k")));
      assertFalse(tooLarge instanceof RateLimitedException, "no retry time: not a rate limit");
      assertEquals("RESPONSE_TOO_LARGE", tooLarge.reason());
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, tooLarge.code());
    }
  }

  @Test
  void retriesCanBeTurnedOff() throws IOException {
    failingGets = 1;
    try (CachetClient client =
        client(start(InsecureServerCredentials.create()))
            .retries(1, Duration.ofMillis(10))
            .build()) {
      assertThrows(UnavailableException.class, () -> client.cache().get("k"));
      assertEquals(1, getAttempts.get());
    }
  }

  @Test
  void everyCallCarriesTheNamespaceAndTheBearerToken() throws IOException {
    AtomicInteger issued = new AtomicInteger();
    Supplier<String> rotating = () -> "token-" + issued.incrementAndGet();
    try (CachetClient client =
        client(start(InsecureServerCredentials.create())).credentials(rotating).build()) {
      client.cache().get("k");
      try (Subscription subscription = client.events().subscribe(List.of("topic"))) {
        assertFalse(subscription.next(Duration.ofMillis(10)).isPresent());
      }
    }
    Metadata unary = headersByMethod.get("Get").get(0);
    Metadata streaming = headersByMethod.get("Subscribe").get(0);
    assertEquals("wired", unary.get(CachetClient.NAMESPACE));
    assertEquals("wired", streaming.get(CachetClient.NAMESPACE));
    assertEquals(
        "Bearer token-1", unary.get(CachetClient.AUTHORIZATION), "the supplier is asked per call");
    assertEquals("Bearer token-2", streaming.get(CachetClient.AUTHORIZATION));
  }

  @Test
  void aFailingCredentialSupplierIsUnauthenticatedWithoutItsMessage() throws IOException {
    Supplier<String> broken =
        () -> {
          throw new IllegalStateException("secret-sauce");
        };
    try (CachetClient client =
        client(start(InsecureServerCredentials.create())).credentials(broken).build()) {
      UnauthenticatedException refused =
          assertThrows(UnauthenticatedException.class, () -> client.cache().get("k"));
      assertFalse(refused.getMessage().contains("secret-sauce"), refused.getMessage());
    }
    assertEquals(0, getAttempts.get(), "nothing reached the server");
  }

  @Test
  void mutualTlsWithTheClientsCertificate(@TempDir Path dir) throws Exception {
    TestCertificates pki = TestCertificates.make(dir);
    ServerCredentials tls =
        TlsServerCredentials.newBuilder()
            .keyManager(pki.serverCertificate().toFile(), pki.serverKey().toFile())
            .trustManager(pki.ca().toFile())
            .clientAuth(TlsServerCredentials.ClientAuth.REQUIRE)
            .build();
    String target = start(tls);
    try (CachetClient client =
        client(target)
            .tls(Tls.ca(pki.ca()).clientCertificate(pki.clientCertificate(), pki.clientKey()))
            .credentials("key")
            .build()) {
      assertEquals("ok", client.cache().get("k").orElseThrow().asString());
    }
    assertEquals("Bearer key", headersByMethod.get("Get").get(0).get(CachetClient.AUTHORIZATION));
    try (CachetClient withoutCertificate =
        client(target).tls(Tls.ca(pki.ca())).retries(1, Duration.ofMillis(10)).build()) {
      assertThrows(UnavailableException.class, () -> withoutCertificate.cache().get("k"));
    }
    try (CachetClient plaintext = client(target).retries(1, Duration.ofMillis(10)).build()) {
      assertThrows(UnavailableException.class, () -> plaintext.cache().get("k"));
    }
    assertEquals(1, getAttempts.get(), "only the mutually authenticated call got through");
  }
}
