package dev.cachet.client;

import cachet.eventbus.v1.Eventbus;
import com.google.protobuf.ByteString;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Map;
import java.util.Objects;

/**
 * An event, with CloudEvents-style attributes: what is published or appended, and what
 * subscriptions and consumers receive. Build one with {@link #of(byte[])} and the {@code with}
 * methods; the server fills in {@code id} and {@code time} when they are left empty.
 *
 * @param id the publisher's id, or the one the server assigned (the stream id for streams)
 * @param source where it comes from (CloudEvents {@code source}), or empty
 * @param type the kind of event (CloudEvents {@code type}), or empty
 * @param time when it happened (null: the server's time)
 * @param contentType the payload's media type, or empty
 * @param payload the body, opaque bytes
 * @param attributes extension attributes
 * @param deliveryCount how often a consumer group delivered it, this delivery included (0 outside
 *     groups)
 */
public record Event(
    String id,
    String source,
    String type,
    Instant time,
    String contentType,
    byte[] payload,
    Map<String, String> attributes,
    long deliveryCount) {

  public Event {
    Objects.requireNonNull(payload, "payload");
    attributes = Map.copyOf(attributes);
  }

  /** An event carrying {@code payload} and nothing else. */
  public static Event of(byte[] payload) {
    return new Event("", "", "", null, "", payload.clone(), Map.of(), 0);
  }

  /** An event carrying {@code payload} as UTF-8 text. */
  public static Event of(String payload) {
    return of(payload.getBytes(StandardCharsets.UTF_8))
        .withContentType("text/plain; charset=utf-8");
  }

  public Event withId(String id) {
    return new Event(id, source, type, time, contentType, payload, attributes, deliveryCount);
  }

  public Event withSource(String source) {
    return new Event(id, source, type, time, contentType, payload, attributes, deliveryCount);
  }

  public Event withType(String type) {
    return new Event(id, source, type, time, contentType, payload, attributes, deliveryCount);
  }

  public Event withContentType(String contentType) {
    return new Event(id, source, type, time, contentType, payload, attributes, deliveryCount);
  }

  public Event withAttributes(Map<String, String> attributes) {
    return new Event(id, source, type, time, contentType, payload, attributes, deliveryCount);
  }

  /** The payload decoded as UTF-8. */
  public String payloadAsString() {
    return new String(payload, StandardCharsets.UTF_8);
  }

  /** Says the id, type and size, never the payload. */
  @Override
  public String toString() {
    return "Event{id=" + id + ", type=" + type + ", " + payload.length + " bytes}";
  }

  Eventbus.Event proto() {
    Eventbus.Event.Builder event =
        Eventbus.Event.newBuilder()
            .setId(id)
            .setSource(source)
            .setType(type)
            .setContentType(contentType)
            .setPayload(ByteString.copyFrom(payload))
            .putAllAttributes(attributes);
    if (time != null) {
      event.setTime(Calls.timestamp(time));
    }
    return event.build();
  }

  static Event from(Eventbus.Event event) {
    return new Event(
        event.getId(),
        event.getSource(),
        event.getType(),
        event.hasTime() ? Calls.instant(event.getTime()) : null,
        event.getContentType(),
        event.getPayload().toByteArray(),
        event.getAttributesMap(),
        event.getDeliveryCount());
  }
}
