package dev.cachet.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A server stream read one message at a time: the next message is requested only when the last one
 * was taken, so a slow reader slows the server down (flow control) instead of filling memory.
 */
final class ServerStream<Q, R> implements ClientResponseObserver<Q, R> {
  /** The stream's end: completion (failure null) or the failure that ended it. */
  private record End(CachetException failure) {}

  private final LinkedBlockingQueue<Object> arrived = new LinkedBlockingQueue<>();
  private volatile ClientCallStreamObserver<Q> call;
  private volatile boolean cancelled;
  private End end;

  @Override
  public void beforeStart(ClientCallStreamObserver<Q> stream) {
    call = stream;
    stream.disableAutoRequestWithInitial(1);
  }

  @Override
  public void onNext(R message) {
    arrived.add(message);
  }

  @Override
  public void onError(Throwable error) {
    arrived.add(
        new End(
            error instanceof StatusRuntimeException status
                ? CachetException.from(status)
                : CachetException.local(Status.Code.UNKNOWN, "stream failed", error)));
  }

  @Override
  public void onCompleted() {
    arrived.add(new End(null));
  }

  /**
   * The next message, waiting up to {@code timeout} (null: without limit); empty when none came in
   * time or the stream ended normally or by {@link #cancel}. Throws what ended it otherwise.
   */
  @SuppressWarnings("unchecked")
  synchronized Optional<R> take(Duration timeout) throws InterruptedException {
    if (end == null) {
      Object next =
          timeout == null ? arrived.take() : arrived.poll(timeout.toNanos(), TimeUnit.NANOSECONDS);
      if (next == null) {
        return Optional.empty();
      }
      if (!(next instanceof End finished)) {
        call.request(1);
        return Optional.of((R) next);
      }
      end = finished;
    }
    if (end.failure() != null && !(cancelled && end.failure().code() == Status.Code.CANCELLED)) {
      throw end.failure();
    }
    return Optional.empty();
  }

  void cancel() {
    cancelled = true;
    call.cancel("closed by the client", null);
  }
}
