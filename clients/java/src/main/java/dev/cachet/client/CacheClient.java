package dev.cachet.client;

import cachet.cache.v1.Cache;
import cachet.cache.v1.CacheServiceGrpc;
import com.google.protobuf.ByteString;
import io.grpc.Channel;
import java.time.Duration;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;
import java.util.function.Supplier;

/** CacheService calls in the client's namespace. Thread-safe and immutable. */
public final class CacheClient {
  /** How long a {@link #getOrSet} miss may take to compute before another caller takes over. */
  private static final Duration FILL_LEASE = Duration.ofSeconds(10);

  private static final Duration FILL_POLL = Duration.ofMillis(50);

  private final Channel channel;
  private final Duration defaultDeadline;
  private final Duration deadline;

  CacheClient(Channel channel, Duration defaultDeadline, Duration deadline) {
    this.channel = channel;
    this.defaultDeadline = defaultDeadline;
    this.deadline = deadline;
  }

  /** The same calls with this deadline each (instead of the client's default). */
  public CacheClient withDeadline(Duration deadline) {
    return new CacheClient(channel, defaultDeadline, Calls.positive(deadline, "deadline"));
  }

  private Duration effectiveDeadline() {
    return deadline != null ? deadline : defaultDeadline;
  }

  private CacheServiceGrpc.CacheServiceBlockingStub stub() {
    return Calls.withDeadline(CacheServiceGrpc.newBlockingStub(channel), effectiveDeadline());
  }

  /** The value of {@code key}, or empty when the key is absent. */
  public Optional<CachedValue> get(String key) {
    Cache.GetResponse reply =
        Calls.call(() -> stub().get(Cache.GetRequest.newBuilder().setKey(key).build()));
    return reply.getFound()
        ? Optional.of(new CachedValue(reply.getValue().toByteArray(), reply.getVersion()))
        : Optional.empty();
  }

  /** The values of the keys that exist, in the order asked (absent keys are left out). */
  public Map<String, CachedValue> getMany(Collection<String> keys) {
    Cache.GetManyResponse reply =
        Calls.call(
            () -> stub().getMany(Cache.GetManyRequest.newBuilder().addAllKeys(keys).build()));
    Map<String, CachedValue> found = new LinkedHashMap<>();
    for (Cache.Entry entry : reply.getEntriesList()) {
      if (entry.getFound()) {
        found.putIfAbsent(
            entry.getKey(), new CachedValue(entry.getValue().toByteArray(), entry.getVersion()));
      }
    }
    return found;
  }

  /** Writes {@code value} unconditionally with the server's default TTL; answers its version. */
  public long set(String key, byte[] value) {
    return set(key, value, SetOptions.defaults());
  }

  /** Writes {@code value} as {@code options} say; answers its new version. */
  public long set(String key, byte[] value, SetOptions options) {
    Cache.SetRequest.Builder request =
        Cache.SetRequest.newBuilder()
            .setKey(key)
            .setValue(ByteString.copyFrom(value))
            .addAllTags(options.tags);
    if (options.ttl != null) {
      request.setTtl(Calls.duration(options.ttl));
    }
    if (options.ifAbsent) {
      request.setCondition(Cache.SetCondition.SET_CONDITION_IF_ABSENT);
    }
    options.ifVersion.ifPresent(request::setIfVersion);
    options.fencingToken.ifPresent(request::setFencingToken);
    return Calls.call(() -> stub().set(request.build())).getVersion();
  }

  /** Removes keys of any type; answers how many existed. */
  public long delete(String... keys) {
    return Calls.call(
            () ->
                stub()
                    .delete(
                        Cache.DeleteRequest.newBuilder()
                            .addAllKeys(java.util.List.of(keys))
                            .build()))
        .getDeleted();
  }

  /** Adds {@code by} to the integer counter at {@code key} (created at 0 with the default TTL). */
  public long increment(String key, long by) {
    return increment(key, by, null);
  }

  /** The same; a counter this call creates gets {@code ttl}. */
  public long increment(String key, long by, Duration ttl) {
    Cache.IncrementRequest.Builder request =
        Cache.IncrementRequest.newBuilder().setKey(key).setByInt(by);
    if (ttl != null) {
      request.setTtl(Calls.duration(Calls.positive(ttl, "ttl")));
    }
    return Calls.call(() -> stub().increment(request.build())).getIntValue();
  }

  /**
   * The value of {@code key}, computing it with {@code loader} on a miss. Only one caller at a time
   * computes a missing key (it holds the server's fill lease); the others wait for its value
   * instead of stampeding the source. The whole call is bounded by the deadline, the loader's time
   * included; if the lease is lost meanwhile (the key was written or deleted), the freshly computed
   * value is still answered, and not written.
   */
  public byte[] getOrSet(String key, Duration ttl, Supplier<byte[]> loader) {
    Calls.positive(ttl, "ttl");
    long deadlineAt = System.nanoTime() + effectiveDeadline().toNanos();
    while (true) {
      Cache.GetOrLeaseResponse lease =
          Calls.call(
              () ->
                  stub(deadlineAt)
                      .getOrLease(
                          Cache.GetOrLeaseRequest.newBuilder()
                              .setKey(key)
                              .setLeaseTtl(Calls.duration(FILL_LEASE))
                              .build()));
      switch (lease.getOutcome()) {
        case LEASE_OUTCOME_HIT:
          return lease.getValue().toByteArray();
        case LEASE_OUTCOME_LEASE_GRANTED:
          return fill(key, ttl, loader, lease.getLeaseToken(), deadlineAt);
        case LEASE_OUTCOME_FILL_PENDING:
          Duration wait = lease.hasRetryAfter() ? Calls.duration(lease.getRetryAfter()) : FILL_POLL;
          sleepUntil(Math.min(System.nanoTime() + Math.max(wait.toNanos(), 1_000_000), deadlineAt));
          break;
        default:
          throw new IllegalStateException("GetOrLease answered " + lease.getOutcome());
      }
    }
  }

  private byte[] fill(
      String key, Duration ttl, Supplier<byte[]> loader, String token, long deadlineAt) {
    long started = System.nanoTime();
    byte[] value = loader.get();
    Cache.FillRequest request =
        Cache.FillRequest.newBuilder()
            .setKey(key)
            .setLeaseToken(token)
            .setValue(ByteString.copyFrom(value))
            .setTtl(Calls.duration(ttl))
            .setRecomputeTime(Calls.duration(Duration.ofNanos(System.nanoTime() - started)))
            .build();
    try {
      Calls.call(() -> stub(deadlineAt).fill(request));
    } catch (LeaseLostException superseded) {
      // Someone wrote or deleted the key while we computed: their write stands.
    }
    return value;
  }

  private CacheServiceGrpc.CacheServiceBlockingStub stub(long deadlineAt) {
    long left = deadlineAt - System.nanoTime();
    return CacheServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(Math.max(left, 0), java.util.concurrent.TimeUnit.NANOSECONDS);
  }

  private static void sleepUntil(long nanoTime) {
    long left = nanoTime - System.nanoTime();
    if (left <= 0) {
      return;
    }
    try {
      java.util.concurrent.TimeUnit.NANOSECONDS.sleep(left);
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      throw CachetException.local(
          io.grpc.Status.Code.CANCELLED,
          "interrupted while waiting for another caller's fill",
          interrupted);
    }
  }
}
