package dev.cachet.client;

import cachet.lock.v1.LockServiceGrpc;
import io.grpc.Channel;
import java.time.Duration;
import java.util.function.Consumer;

/** LockService calls in the client's namespace. Thread-safe and immutable. */
public final class LockClient {
  private final Channel channel;
  private final Duration defaultDeadline;
  private final Duration deadline;

  LockClient(Channel channel, Duration defaultDeadline, Duration deadline) {
    this.channel = channel;
    this.defaultDeadline = defaultDeadline;
    this.deadline = deadline;
  }

  /**
   * The same calls with this deadline each. It bounds an acquire's whole wait, and a {@link
   * #hold}'s whole life (the server releases the lock when it passes).
   */
  public LockClient withDeadline(Duration deadline) {
    return new LockClient(channel, defaultDeadline, Calls.positive(deadline, "deadline"));
  }

  /** Takes the lock for {@code ttl} if it is free; otherwise {@link LockHeldException}. */
  public Lock acquire(String name, Duration ttl) {
    return acquire(name, ttl, Duration.ZERO);
  }

  /**
   * Takes the lock for {@code ttl}, waiting up to {@code wait} for its holder to release it
   * (waiters are woken on release, in arrival order where practical); {@link LockHeldException}
   * when the wait runs out first.
   */
  public Lock acquire(String name, Duration ttl, Duration wait) {
    cachet.lock.v1.Lock.AcquireRequest request =
        cachet.lock.v1.Lock.AcquireRequest.newBuilder()
            .setName(name)
            .setTtl(Calls.duration(Calls.positive(ttl, "ttl")))
            .setWait(Calls.duration(wait))
            .build();
    cachet.lock.v1.Lock.AcquireResponse reply =
        Calls.call(
            () ->
                Calls.withDeadline(LockServiceGrpc.newBlockingStub(channel), waitingDeadline(wait))
                    .acquire(request));
    return new Lock(
        name,
        reply.getOwnerToken(),
        reply.getFencingToken(),
        Calls.instant(reply.getExpireTime()),
        Calls.duration(reply.getWaited()));
  }

  /** Gives the lock back; {@link LockNotOwnedException} if it expired or was released already. */
  public void release(Lock lock) {
    Calls.call(
        () ->
            Calls.withDeadline(LockServiceGrpc.newBlockingStub(channel), unaryDeadline())
                .release(
                    cachet.lock.v1.Lock.ReleaseRequest.newBuilder()
                        .setName(lock.name())
                        .setOwnerToken(lock.ownerToken())
                        .build()));
  }

  /** {@link #hold(String, Duration, Duration, Consumer)} without a lost callback. */
  public LockHold hold(String name, Duration ttl, Duration wait) {
    return hold(name, ttl, wait, lost -> {});
  }

  /**
   * Holds the lock until the returned hold is closed: the server renews it every {@code ttl / 3}
   * while the stream is open, and releases it when the hold is closed or this process dies (at the
   * latest {@code ttl} after the last renewal). Blocks until the lock is granted, or throws {@link
   * LockHeldException} when {@code wait} runs out first.
   *
   * <pre>{@code
   * try (LockHold hold = client.locks().hold("invoice:7", Duration.ofSeconds(10), Duration.ofSeconds(5), lost -> stop())) {
   *   client.cache().set("invoice:7", paid, SetOptions.defaults().fencingToken(hold.fencingToken()));
   * }
   * }</pre>
   *
   * @param onLost runs once, on a gRPC thread, if the server reports the lock lost (or the stream
   *     breaks) while it is held: the protected work must stop
   */
  public LockHold hold(String name, Duration ttl, Duration wait, Consumer<LockHold> onLost) {
    Calls.positive(ttl, "ttl");
    return LockHold.open(
        LockServiceGrpc.newStub(channel),
        deadline,
        name,
        ttl,
        wait,
        waitingDeadline(wait),
        unaryDeadline(),
        onLost);
  }

  private Duration unaryDeadline() {
    return deadline != null ? deadline : defaultDeadline;
  }

  /** An explicit deadline bounds the wait; otherwise the wait plus the default deadline does. */
  private Duration waitingDeadline(Duration wait) {
    if (wait.isNegative()) {
      throw new IllegalArgumentException("wait must not be negative, got " + wait);
    }
    return deadline != null ? deadline : defaultDeadline.plus(wait);
  }
}
