package dev.cachet.client;

import cachet.eventbus.v1.Eventbus.SubscribeRequest;
import cachet.eventbus.v1.Eventbus.SubscribeResponse;
import io.grpc.Status;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * An open {@code Subscribe} stream: the events published to its topics from the moment it was
 * opened (at-most-once: nothing published while it is closed or too slow reaches it). Read it as a
 * blocking {@link Iterator} ({@link #hasNext()} waits for the next event), with {@link
 * #next(Duration)}, or give {@link EventClient#subscribe(java.util.Collection, Consumer)} a
 * callback. Close it to end the subscription.
 */
public final class Subscription implements Iterator<TopicMessage>, AutoCloseable {
  private final ServerStream<SubscribeRequest, SubscribeResponse> stream;
  private TopicMessage buffered;
  private volatile Throwable failure;

  Subscription(ServerStream<SubscribeRequest, SubscribeResponse> stream, Duration activeDeadline) {
    this.stream = stream;
    // The first message says every subscription is in place: only then does publishing reach it.
    SubscribeResponse first =
        interruptible(() -> stream.take(activeDeadline))
            .orElseThrow(
                () -> {
                  stream.cancel();
                  return CachetException.local(
                      Status.Code.DEADLINE_EXCEEDED,
                      "the subscription was not active within " + activeDeadline,
                      null);
                });
    if (!first.hasActive()) {
      stream.cancel();
      throw CachetException.local(
          Status.Code.INTERNAL, "Subscribe did not start with `active`", null);
    }
  }

  /** Waits for the next event; false once the subscription is closed or ended. */
  @Override
  public boolean hasNext() {
    if (buffered == null) {
      buffered = read(null).orElse(null);
    }
    return buffered != null;
  }

  @Override
  public TopicMessage next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the subscription has ended");
    }
    TopicMessage message = buffered;
    buffered = null;
    return message;
  }

  /** The next event, waiting up to {@code timeout}; empty when none came in time or it ended. */
  public Optional<TopicMessage> next(Duration timeout) {
    if (buffered != null) {
      TopicMessage message = buffered;
      buffered = null;
      return Optional.of(message);
    }
    return read(timeout);
  }

  /** Why a callback subscription stopped: its handler threw, or the stream failed. */
  public Optional<Throwable> failure() {
    return Optional.ofNullable(failure);
  }

  /** Ends the subscription; the server frees it at once. */
  @Override
  public void close() {
    stream.cancel();
  }

  void deliverTo(Consumer<TopicMessage> handler) {
    Thread reader =
        new Thread(
            () -> {
              try {
                while (hasNext()) {
                  handler.accept(next());
                }
              } catch (RuntimeException stopped) {
                failure = stopped;
                close();
              }
            },
            "cachet-subscription");
    reader.setDaemon(true);
    reader.start();
  }

  private Optional<TopicMessage> read(Duration timeout) {
    while (true) {
      Optional<SubscribeResponse> next = interruptible(() -> stream.take(timeout));
      if (next.isEmpty()) {
        return Optional.empty();
      }
      if (next.get().hasMessage()) {
        var message = next.get().getMessage();
        return Optional.of(
            new TopicMessage(
                message.getTopic(), message.getPattern(), Event.from(message.getEvent())));
      }
      // `active` again: the server re-subscribed after a Redis reconnect.
    }
  }

  interface Take<T> {
    Optional<T> take() throws InterruptedException;
  }

  static <T> Optional<T> interruptible(Take<T> take) {
    try {
      return take.take();
    } catch (InterruptedException interrupted) {
      Thread.currentThread().interrupt();
      throw CachetException.local(
          Status.Code.CANCELLED, "interrupted while reading a stream", interrupted);
    }
  }
}
