package dev.cachet.client;

import cachet.eventbus.v1.Eventbus.ConsumeRequest;
import cachet.eventbus.v1.Eventbus.ConsumeResponse;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.function.Consumer;

/**
 * An open {@code Consume} stream of one consumer in a group: at-least-once delivery, each event
 * pending until acknowledged. Read it as a blocking {@link Iterator} of {@link Delivery} (ack each
 * one), with {@link #next(Duration)}, or give {@link EventClient#consume(String, String, String,
 * Consumer)} a callback. Close it to stop consuming (unacknowledged events stay pending).
 */
public final class Consumption implements Iterator<Delivery>, AutoCloseable {
  private final EventClient events;
  private final String stream;
  private final String group;
  private final ServerStream<ConsumeRequest, ConsumeResponse> responses;
  private final ArrayDeque<Delivery> batch = new ArrayDeque<>();
  private volatile Throwable failure;

  Consumption(
      EventClient events,
      String stream,
      String group,
      ServerStream<ConsumeRequest, ConsumeResponse> responses) {
    this.events = events;
    this.stream = stream;
    this.group = group;
    this.responses = responses;
  }

  /** Waits for the next delivery; false once the consumption is closed or ended. */
  @Override
  public boolean hasNext() {
    return fill(null);
  }

  @Override
  public Delivery next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the consumption has ended");
    }
    return batch.removeFirst();
  }

  /** The next delivery, waiting up to {@code timeout}; empty when none came in time or it ended. */
  public Optional<Delivery> next(Duration timeout) {
    return fill(timeout) ? Optional.of(batch.removeFirst()) : Optional.empty();
  }

  /** Why a callback consumption stopped: its handler threw, or the stream failed. */
  public Optional<Throwable> failure() {
    return Optional.ofNullable(failure);
  }

  @Override
  public void close() {
    responses.cancel();
  }

  void deliverTo(Consumer<Delivery> handler) {
    Thread reader =
        new Thread(
            () -> {
              try {
                while (hasNext()) {
                  Delivery delivery = next();
                  handler.accept(delivery);
                  delivery.ack();
                }
              } catch (RuntimeException stopped) {
                failure = stopped;
                close();
              }
            },
            "cachet-consumer");
    reader.setDaemon(true);
    reader.start();
  }

  private boolean fill(Duration timeout) {
    long deadlineAt = timeout == null ? 0 : System.nanoTime() + timeout.toNanos();
    while (batch.isEmpty()) {
      Duration left =
          timeout == null ? null : Duration.ofNanos(Math.max(deadlineAt - System.nanoTime(), 0));
      Optional<ConsumeResponse> next = Subscription.interruptible(() -> responses.take(left));
      if (next.isEmpty()) {
        return false;
      }
      // A batch may only report dead-lettered ids; it then holds no event to hand out.
      next.get()
          .getEventsList()
          .forEach(event -> batch.add(new Delivery(events, stream, group, Event.from(event))));
    }
    return true;
  }
}
