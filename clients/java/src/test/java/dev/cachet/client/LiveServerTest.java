package dev.cachet.client;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** The wrapper against a live cachet server and a real redis-server (see {@link LiveServer}). */
@ExtendWith(LiveServer.class)
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class LiveServerTest {
  /** How long to wait for something that should happen at once (a loaded CI machine is slow). */
  private static final Duration SOON = Duration.ofSeconds(15);

  private static CachetClient client;
  private static ExecutorService background;

  @BeforeAll
  static void connect() {
    client = LiveServer.client("java-tests");
    background = Executors.newCachedThreadPool();
  }

  @AfterAll
  static void disconnect() {
    background.shutdownNow();
    client.close();
  }

  private static String unique(String prefix) {
    return prefix + ":" + UUID.randomUUID();
  }

  private static byte[] bytes(String text) {
    return text.getBytes(UTF_8);
  }

  @Test
  void namespacesNeverSeeEachOthersKeys() {
    String key = unique("shared-name");
    try (CachetClient shop = LiveServer.client("java-shop");
        CachetClient billing = LiveServer.client("java-billing")) {
      shop.cache().set(key, bytes("shop's"));
      assertEquals(Optional.empty(), billing.cache().get(key));
      billing.cache().set(key, bytes("billing's"));
      assertEquals("shop's", shop.cache().get(key).orElseThrow().asString());
      assertEquals("billing's", billing.cache().get(key).orElseThrow().asString());
      assertEquals(1, shop.cache().delete(key));
      assertEquals("billing's", billing.cache().get(key).orElseThrow().asString());
    }
  }

  @Test
  void setGetManyDeleteAndIncrement() {
    String a = unique("a");
    String b = unique("b");
    String absent = unique("absent");
    long version =
        client.cache().set(a, bytes("1"), SetOptions.ttl(Duration.ofMinutes(5)).tags("group"));
    client.cache().set(b, bytes("2"));
    Map<String, CachedValue> found = client.cache().getMany(List.of(b, absent, a));
    assertEquals(List.of(b, a), new ArrayList<>(found.keySet()));
    assertEquals(version, found.get(a).version());
    assertArrayEquals(bytes("2"), found.get(b).bytes());
    assertEquals(2, client.cache().delete(a, b, absent));
    assertEquals(Optional.empty(), client.cache().get(a));

    String counter = unique("counter");
    assertEquals(5, client.cache().increment(counter, 5, Duration.ofMinutes(1)));
    assertEquals(3, client.cache().increment(counter, -2));
  }

  @Test
  void compareAndSwapTakesTheVersionItRead() {
    String key = unique("cas");
    long first = client.cache().set(key, bytes("v1"));
    CachedValue read = client.cache().get(key).orElseThrow();
    assertEquals(first, read.version());

    long second =
        client.cache().set(key, bytes("v2"), SetOptions.defaults().ifVersion(read.version()));
    assertTrue(Long.compareUnsigned(second, first) > 0, "versions increase");

    VersionMismatchException stale =
        assertThrows(
            VersionMismatchException.class,
            () ->
                client
                    .cache()
                    .set(
                        key,
                        bytes("lost update"),
                        SetOptions.defaults().ifVersion(read.version())));
    assertEquals(io.grpc.Status.Code.ABORTED, stale.code());
    assertEquals("VERSION_MISMATCH", stale.reason());
    assertEquals(second, stale.currentVersion().orElseThrow());
    assertEquals("v2", client.cache().get(key).orElseThrow().asString());

    assertThrows(
        KeyExistsException.class,
        () -> client.cache().set(key, bytes("x"), SetOptions.defaults().ifAbsent()));
  }

  @Test
  void fencingTokensRejectAnOlderHolder() {
    String key = unique("fenced");
    client.cache().set(key, bytes("by 7"), SetOptions.defaults().fencingToken(7));
    FencingTokenStaleException stale =
        assertThrows(
            FencingTokenStaleException.class,
            () -> client.cache().set(key, bytes("by 6"), SetOptions.defaults().fencingToken(6)));
    assertEquals("FENCING_TOKEN_STALE", stale.reason());
    assertEquals("by 7", client.cache().get(key).orElseThrow().asString());
  }

  @Test
  void badInputIsInvalidArgumentNamingTheField() {
    InvalidArgumentException bad =
        assertThrows(InvalidArgumentException.class, () -> client.cache().set("", bytes("x")));
    assertTrue(
        bad.fieldViolations().containsKey("key"), () -> "violations: " + bad.fieldViolations());
    assertFalse(bad.getMessage().contains("Traceback"));
  }

  @Test
  void perCallDeadlinesEndTheCall() {
    assertThrows(
        DeadlineExceededException.class,
        () -> client.cache().withDeadline(Duration.ofNanos(1)).get(unique("never")));
    // The client's default deadline is untouched by the view above.
    assertEquals(Optional.empty(), client.cache().get(unique("still-works")));
  }

  @Test
  void anExplicitDeadlineBoundsASubscriptionsLife() {
    EventClient briefly = client.events().withDeadline(Duration.ofSeconds(2));
    // Nothing is published: the stream ends when the deadline passes (on a machine so loaded
    // that even the confirmation comes later, subscribe itself says so).
    assertThrows(
        DeadlineExceededException.class,
        () -> {
          try (Subscription subscription = briefly.subscribe(List.of(unique("quiet")))) {
            subscription.hasNext();
          }
        });
  }

  @Test
  void getOrSetComputesAMissOnceForConcurrentCallers() throws Exception {
    String key = unique("expensive");
    AtomicInteger loads = new AtomicInteger();
    CountDownLatch allAsking = new CountDownLatch(4);
    List<Future<byte[]>> callers = new ArrayList<>();
    for (int i = 0; i < 4; i++) {
      callers.add(
          background.submit(
              () -> {
                allAsking.countDown();
                allAsking.await();
                return client
                    .cache()
                    .withDeadline(SOON)
                    .getOrSet(
                        key,
                        Duration.ofMinutes(1),
                        () -> {
                          loads.incrementAndGet();
                          sleep(Duration.ofMillis(300));
                          return bytes("computed");
                        });
              }));
    }
    for (Future<byte[]> caller : callers) {
      assertArrayEquals(bytes("computed"), caller.get(30, TimeUnit.SECONDS));
    }
    assertEquals(1, loads.get(), "only the lease holder computes");
    assertEquals("computed", client.cache().get(key).orElseThrow().asString());
    // A hit does not call the loader at all.
    client
        .cache()
        .getOrSet(
            key,
            Duration.ofMinutes(1),
            () -> {
              throw new AssertionError("loaded on a hit");
            });
  }

  @Test
  @SuppressWarnings("try") // the hold is closed inside its block, to release it mid-test
  void aHeldLockBlocksASecondAcquirerUntilItIsReleased() throws Exception {
    String name = unique("lock");
    try (LockHold first = client.locks().hold(name, Duration.ofSeconds(10), Duration.ZERO)) {
      LockHeldException held =
          assertThrows(
              LockHeldException.class, () -> client.locks().acquire(name, Duration.ofSeconds(5)));
      assertTrue(held.remainingTtl().isPresent(), "LOCK_HELD says the holder's remaining TTL");

      CompletableFuture<Lock> second =
          CompletableFuture.supplyAsync(
              () -> client.locks().acquire(name, Duration.ofSeconds(10), Duration.ofSeconds(30)),
              background);
      // Still waiting while the first hold is open (the wait is 30 s, so this is not a timeout).
      sleep(Duration.ofMillis(500));
      assertFalse(second.isDone(), "the second acquirer waits while the lock is held");

      first.close();
      Lock granted = second.get(30, TimeUnit.SECONDS);
      assertTrue(
          granted.waited().compareTo(Duration.ZERO) > 0, "the server says the acquire waited");
      assertTrue(
          Long.compareUnsigned(granted.fencingToken(), first.fencingToken()) > 0,
          "a later grant has a larger fencing token");
      assertFalse(first.isLost(), "a released hold is not lost");
      client.locks().release(granted);
      assertThrows(LockNotOwnedException.class, () -> client.locks().release(granted));
    }
  }

  @Test
  void aDeadlineBoundsTheWaitForALock() {
    String name = unique("busy");
    Lock holder = client.locks().acquire(name, Duration.ofSeconds(30));
    try {
      assertThrows(
          DeadlineExceededException.class,
          () ->
              client
                  .locks()
                  .withDeadline(Duration.ofMillis(300))
                  .acquire(name, Duration.ofSeconds(5), Duration.ofSeconds(20)));
    } finally {
      client.locks().release(holder);
    }
  }

  @Test
  void aLostHoldRunsTheCallback() throws Exception {
    String name = unique("lost");
    CountDownLatch lost = new CountDownLatch(1);
    try (LockHold hold =
        client
            .locks()
            .hold(name, Duration.ofMillis(600), Duration.ZERO, gone -> lost.countDown())) {
      // Someone else frees the lock behind the holder's back: the next renewal finds it gone.
      client
          .locks()
          .release(
              new Lock(
                  name, hold.ownerToken(), hold.fencingToken(), hold.expireTime(), Duration.ZERO));
      assertTrue(lost.await(SOON.toSeconds(), TimeUnit.SECONDS), "the lost callback ran");
      assertTrue(hold.isLost());
    }
  }

  @Test
  void rateLimitDenialSaysWhenToRetry() {
    String key = unique("login");
    RateLimit twoPerMinute =
        RateLimit.of(2, Duration.ofMinutes(1)).algorithm(RateLimit.Algorithm.FIXED_WINDOW);
    assertTrue(client.rateLimits().check(key, twoPerMinute).allowed());
    RateDecision second = client.rateLimits().check(key, twoPerMinute).orThrow();
    assertEquals(0, second.remaining());

    RateDecision denied = client.rateLimits().check(key, twoPerMinute);
    assertFalse(denied.allowed());
    Duration retryAfter = denied.retryAfter().orElseThrow();
    assertTrue(
        !retryAfter.isNegative()
            && !retryAfter.isZero()
            && retryAfter.compareTo(Duration.ofMinutes(1)) <= 0,
        () -> "retry after " + retryAfter);

    RateLimitedException limited = assertThrows(RateLimitedException.class, denied::orThrow);
    assertEquals(RateLimitedException.RATE_LIMITED, limited.reason());
    assertEquals(Optional.of(retryAfter), limited.retryAfter());
    // A peek consumes nothing and still says no.
    assertFalse(client.rateLimits().check(key, twoPerMinute, 0).allowed());
  }

  @Test
  void publishReachesASubscriber() throws Exception {
    String topic = unique("news");
    try (Subscription subscription = client.events().subscribe(List.of(topic))) {
      PublishResult published =
          client.events().publish(topic, Event.of("hello").withType("greeting"));
      assertEquals(1, published.receivers());
      TopicMessage received = subscription.next(SOON).orElseThrow();
      assertEquals(topic, received.topic());
      assertEquals("hello", received.event().payloadAsString());
      assertEquals("greeting", received.event().type());
      assertEquals(published.id(), received.event().id());
    }
    assertEquals(0, client.events().publish(topic, bytes("nobody listens")).receivers());
  }

  @Test
  void aSubscriptionCallbackGetsEachEvent() throws Exception {
    String topic = unique("ticks");
    List<String> received = new CopyOnWriteArrayList<>();
    CountDownLatch three = new CountDownLatch(3);
    try (Subscription subscription =
        client
            .events()
            .subscribe(
                List.of(topic),
                message -> {
                  received.add(message.event().payloadAsString());
                  three.countDown();
                })) {
      for (String tick : List.of("1", "2", "3")) {
        client.events().publish(topic, bytes(tick));
      }
      assertTrue(three.await(SOON.toSeconds(), TimeUnit.SECONDS), () -> "received " + received);
      assertEquals(List.of("1", "2", "3"), received);
      assertEquals(Optional.empty(), subscription.failure());
    }
  }

  @Test
  void consumeDeliversUntilAcknowledged() {
    String stream = unique("orders");
    assertTrue(client.events().createGroup(stream, "billing", "0"));
    assertFalse(client.events().createGroup(stream, "billing", "0"), "an existing group is kept");
    String firstId = client.events().append(stream, Event.of("order 1"));
    client.events().append(stream, Event.of("order 2"));

    try (Consumption consumption = client.events().consume(stream, "billing", "worker-1")) {
      Delivery first = consumption.next(SOON).orElseThrow();
      assertEquals(firstId, first.event().id());
      assertEquals("order 1", first.event().payloadAsString());
      assertEquals(1, first.event().deliveryCount());
      assertTrue(first.ack());
      assertFalse(first.ack(), "an acknowledged event is no longer pending");
      Delivery second = consumption.next(SOON).orElseThrow();
      assertEquals("order 2", second.event().payloadAsString());
      // Not acknowledged: still pending for worker-1.
    }
    // The same consumer, restarted, gets its unacknowledged event again.
    try (Consumption again = client.events().consume(stream, "billing", "worker-1")) {
      Delivery redelivered = again.next(SOON).orElseThrow();
      assertEquals("order 2", redelivered.event().payloadAsString());
      assertEquals(2, redelivered.event().deliveryCount());
      assertTrue(redelivered.ack());
    }
  }

  @Test
  void aConsumeCallbackAcknowledgesWhatItHandled() throws Exception {
    String stream = unique("jobs");
    client.events().createGroup(stream, "workers", "$");
    List<String> ids = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      ids.add(client.events().append(stream, Event.of("job " + i)));
    }
    CountDownLatch handled = new CountDownLatch(3);
    try (Consumption consumption =
        client.events().consume(stream, "workers", "worker-a", delivery -> handled.countDown())) {
      assertTrue(handled.await(SOON.toSeconds(), TimeUnit.SECONDS));
      // The callback loop acknowledges each event after its handler returned: none stays pending.
      // (Read with the generated stub on the client's channel, which carries the namespace too.)
      var pending =
          cachet.eventbus.v1.EventBusServiceGrpc.newBlockingStub(client.channel())
              .withDeadlineAfter(5, TimeUnit.SECONDS);
      var request =
          cachet.eventbus.v1.Eventbus.PendingRequest.newBuilder()
              .setStream(stream)
              .setGroup("workers")
              .build();
      waitUntil(() -> pending.pending(request).getCount() == 0);
      assertEquals(
          0,
          client.events().ack(stream, "workers", ids.toArray(String[]::new)),
          "all acknowledged already");
      assertEquals(Optional.empty(), consumption.failure());
    }
  }

  private static void waitUntil(java.util.function.BooleanSupplier condition) {
    long deadline = System.nanoTime() + SOON.toNanos();
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        throw new AssertionError("condition not met within " + SOON);
      }
      sleep(Duration.ofMillis(50));
    }
  }

  static void sleep(Duration duration) {
    try {
      Thread.sleep(duration.toMillis());
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      throw new AssertionError("interrupted", interrupted);
    }
  }
}
