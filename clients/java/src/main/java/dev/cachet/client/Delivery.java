package dev.cachet.client;

/**
 * An event delivered to a consumer of a group. It stays pending for the group (and is delivered
 * again, to this or another consumer) until {@link #ack()}.
 */
public final class Delivery {
  private final EventClient events;
  private final String stream;
  private final String group;
  private final Event event;

  Delivery(EventClient events, String stream, String group, Event event) {
    this.events = events;
    this.stream = stream;
    this.group = group;
    this.event = event;
  }

  /** The event, with its stream id ({@code event().id()}) and delivery count. */
  public Event event() {
    return event;
  }

  public String stream() {
    return stream;
  }

  public String group() {
    return group;
  }

  /** Acknowledges the event; true if it was still pending (false: acknowledged already). */
  public boolean ack() {
    return events.ack(stream, group, event.id()) == 1;
  }

  @Override
  public String toString() {
    return "Delivery{" + stream + "/" + group + ", " + event + "}";
  }
}
