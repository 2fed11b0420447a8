package dev.cachet.client;

import cachet.lock.v1.Lock.HoldAcquire;
import cachet.lock.v1.Lock.HoldRelease;
import cachet.lock.v1.Lock.HoldRequest;
import cachet.lock.v1.Lock.HoldResponse;
import cachet.lock.v1.LockServiceGrpc;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.time.Instant;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Consumer;

/**
 * A lock held over a {@code LockService/Hold} stream, renewed by the server for as long as the hold
 * is open. Close it (try-with-resources) to release the lock. If the server reports the lock lost,
 * {@link #isLost()} turns true and the lost callback runs: the holder must stop.
 */
public final class LockHold implements AutoCloseable {
  private final String name;
  private final Consumer<LockHold> onLost;
  private final Duration closeDeadline;
  private final CompletableFuture<Void> granted = new CompletableFuture<>();
  private final CompletableFuture<Void> ended = new CompletableFuture<>();
  private final AtomicBoolean lost = new AtomicBoolean();
  private final AtomicBoolean closing = new AtomicBoolean();
  private volatile ClientCallStreamObserver<HoldRequest> requests;
  private volatile String ownerToken;
  private volatile long fencingToken;
  private volatile Instant expireTime;

  private LockHold(String name, Consumer<LockHold> onLost, Duration closeDeadline) {
    this.name = name;
    this.onLost = onLost;
    this.closeDeadline = closeDeadline;
  }

  static LockHold open(
      LockServiceGrpc.LockServiceStub stub,
      Duration streamDeadline,
      String name,
      Duration ttl,
      Duration wait,
      Duration waitDeadline,
      Duration closeDeadline,
      Consumer<LockHold> onLost) {
    LockHold hold = new LockHold(name, onLost, closeDeadline);
    Calls.withDeadline(stub, streamDeadline).hold(hold.new Events());
    hold.send(
        HoldRequest.newBuilder()
            .setAcquire(
                HoldAcquire.newBuilder()
                    .setName(name)
                    .setTtl(Calls.duration(ttl))
                    .setWait(Calls.duration(wait)))
            .build());
    try {
      hold.granted.get(waitDeadline.toNanos(), TimeUnit.NANOSECONDS);
      return hold;
    } catch (ExecutionException failed) {
      throw (CachetException) failed.getCause();
    } catch (TimeoutException late) {
      hold.cancel("no grant before the deadline");
      throw CachetException.local(
          Status.Code.DEADLINE_EXCEEDED,
          "lock " + name + " was not granted within " + waitDeadline,
          late);
    } catch (InterruptedException interrupted) {
      hold.cancel("interrupted");
      Thread.currentThread().interrupt();
      throw CachetException.local(
          Status.Code.CANCELLED, "interrupted while waiting for lock " + name, interrupted);
    }
  }

  public String name() {
    return name;
  }

  /** The fencing token of this grant, constant for the hold's life: pass it with every write. */
  public long fencingToken() {
    return fencingToken;
  }

  /** The owner token of the grant (a secret). */
  public String ownerToken() {
    return ownerToken;
  }

  /** Redis time at which the lock expires unless the server renews it again. */
  public Instant expireTime() {
    return expireTime;
  }

  /** True once the server reported the lock lost, or the stream broke while it was held. */
  public boolean isLost() {
    return lost.get();
  }

  /** Releases the lock and waits (up to the client's deadline) for the server to confirm. */
  @Override
  public void close() {
    if (!closing.compareAndSet(false, true) || ended.isDone()) {
      return;
    }
    synchronized (this) {
      requests.onNext(
          HoldRequest.newBuilder().setRelease(HoldRelease.getDefaultInstance()).build());
      requests.onCompleted();
    }
    try {
      ended.get(closeDeadline.toNanos(), TimeUnit.NANOSECONDS);
    } catch (TimeoutException | ExecutionException unconfirmed) {
      // Cancelling makes the server release it as soon as it notices (or the TTL ends it).
      cancel("release not confirmed");
    } catch (InterruptedException interrupted) {
      cancel("interrupted");
      Thread.currentThread().interrupt();
    }
  }

  @Override
  public String toString() {
    return "LockHold{"
        + name
        + ", fencing token "
        + Long.toUnsignedString(fencingToken)
        + (isLost() ? ", lost" : "")
        + "}";
  }

  private synchronized void send(HoldRequest request) {
    requests.onNext(request);
  }

  private void cancel(String why) {
    closing.set(true);
    requests.cancel(why, null);
  }

  private void reportLost() {
    if (!closing.get() && lost.compareAndSet(false, true)) {
      onLost.accept(this);
    }
  }

  private final class Events implements ClientResponseObserver<HoldRequest, HoldResponse> {
    @Override
    public void beforeStart(ClientCallStreamObserver<HoldRequest> stream) {
      requests = stream;
    }

    @Override
    public void onNext(HoldResponse event) {
      switch (event.getEventCase()) {
        case ACQUIRED -> {
          ownerToken = event.getAcquired().getOwnerToken();
          fencingToken = event.getAcquired().getFencingToken();
          expireTime = Calls.instant(event.getAcquired().getExpireTime());
          granted.complete(null);
        }
        case RENEWED -> expireTime = Calls.instant(event.getRenewed().getExpireTime());
        case LOST -> reportLost();
        default -> {}
      }
    }

    @Override
    public void onError(Throwable error) {
      CachetException failure =
          error instanceof StatusRuntimeException status
              ? CachetException.from(status)
              : CachetException.local(Status.Code.UNKNOWN, "Hold stream failed", error);
      if (!granted.completeExceptionally(failure)) {
        reportLost();
      }
      ended.complete(null);
    }

    @Override
    public void onCompleted() {
      if (!granted.completeExceptionally(
          CachetException.local(
              Status.Code.UNKNOWN, "Hold on " + name + " ended before a grant", null))) {
        reportLost();
      }
      ended.complete(null);
    }
  }
}
