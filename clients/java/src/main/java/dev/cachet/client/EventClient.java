package dev.cachet.client;

import cachet.eventbus.v1.EventBusServiceGrpc;
import cachet.eventbus.v1.Eventbus;
import io.grpc.Channel;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.function.Consumer;

/**
 * EventBusService calls in the client's namespace: fire-and-forget pub/sub topics ({@link
 * #publish}, {@link #subscribe}) and durable streams read by consumer groups ({@link #append},
 * {@link #createGroup}, {@link #consume}, {@link #ack}). Thread-safe and immutable.
 */
public final class EventClient {
  private final Channel channel;
  private final Duration defaultDeadline;
  private final Duration deadline;

  EventClient(Channel channel, Duration defaultDeadline, Duration deadline) {
    this.channel = channel;
    this.defaultDeadline = defaultDeadline;
    this.deadline = deadline;
  }

  /**
   * The same calls with this deadline each; it also bounds the life of the subscriptions and
   * consumptions opened through it (without it, streams stay open until closed).
   */
  public EventClient withDeadline(Duration deadline) {
    return new EventClient(channel, defaultDeadline, Calls.positive(deadline, "deadline"));
  }

  private Duration unaryDeadline() {
    return deadline != null ? deadline : defaultDeadline;
  }

  private EventBusServiceGrpc.EventBusServiceBlockingStub blocking() {
    return Calls.withDeadline(EventBusServiceGrpc.newBlockingStub(channel), unaryDeadline());
  }

  private EventBusServiceGrpc.EventBusServiceStub streaming() {
    return Calls.withDeadline(EventBusServiceGrpc.newStub(channel), deadline);
  }

  /** Sends {@code payload} to the current subscribers of {@code topic}. */
  public PublishResult publish(String topic, byte[] payload) {
    return publish(topic, Event.of(payload));
  }

  /** Sends {@code event} to the current subscribers of {@code topic} (at-most-once). */
  public PublishResult publish(String topic, Event event) {
    Eventbus.PublishResponse reply =
        Calls.call(
            () ->
                blocking()
                    .publish(
                        Eventbus.PublishRequest.newBuilder()
                            .setTopic(topic)
                            .setEvent(event.proto())
                            .build()));
    return new PublishResult(reply.getReceivers(), reply.getId());
  }

  /** Subscribes to {@code topics}; returns once the subscription is in place. */
  public Subscription subscribe(Collection<String> topics) {
    return subscribe(topics, List.of());
  }

  /**
   * Subscribes to {@code topics} and to the topics matching the glob {@code patterns}; returns once
   * every subscription is in place, so an event published after this returns reaches it.
   */
  public Subscription subscribe(Collection<String> topics, Collection<String> patterns) {
    Eventbus.SubscribeRequest request =
        Eventbus.SubscribeRequest.newBuilder()
            .addAllTopics(topics)
            .addAllPatterns(patterns)
            .build();
    ServerStream<Eventbus.SubscribeRequest, Eventbus.SubscribeResponse> stream =
        new ServerStream<>();
    streaming().subscribe(request, stream);
    return new Subscription(stream, unaryDeadline());
  }

  /**
   * Subscribes to {@code topics} and calls {@code handler} with each event, one at a time, on a
   * thread of the subscription's own. A handler that throws ends the subscription ({@link
   * Subscription#failure()} says why).
   */
  public Subscription subscribe(Collection<String> topics, Consumer<TopicMessage> handler) {
    Subscription subscription = subscribe(topics);
    subscription.deliverTo(handler);
    return subscription;
  }

  /**
   * Adds {@code event} to the durable {@code stream} (created if missing); answers its stream id.
   */
  public String append(String stream, Event event) {
    return Calls.call(
            () ->
                blocking()
                    .append(
                        Eventbus.AppendRequest.newBuilder()
                            .setStream(stream)
                            .setEvent(event.proto())
                            .build()))
        .getId();
  }

  /**
   * Creates consumer group {@code group} on {@code stream} (and the stream, if missing), starting
   * after {@code startId}: {@code "$"} for events appended from now on, {@code "0"} for every
   * event. Answers false if the group existed already (it is then left as it is).
   */
  public boolean createGroup(String stream, String group, String startId) {
    return Calls.call(
            () ->
                blocking()
                    .createGroup(
                        Eventbus.CreateGroupRequest.newBuilder()
                            .setStream(stream)
                            .setGroup(group)
                            .setStartId(startId)
                            .setCreateStream(true)
                            .setIfNotExists(true)
                            .build()))
        .getCreated();
  }

  /**
   * Consumes {@code stream} as {@code consumer} of {@code group}: first the events still pending
   * for this consumer (after a restart under the same name), then new ones as they are appended.
   */
  public Consumption consume(String stream, String group, String consumer) {
    Eventbus.ConsumeRequest request =
        Eventbus.ConsumeRequest.newBuilder()
            .setStream(stream)
            .setGroup(group)
            .setConsumer(consumer)
            .setRedeliverPending(true)
            .build();
    ServerStream<Eventbus.ConsumeRequest, Eventbus.ConsumeResponse> responses =
        new ServerStream<>();
    streaming().consume(request, responses);
    return new Consumption(this, stream, group, responses);
  }

  /**
   * Consumes as above, calling {@code handler} with each delivery on a thread of the consumption's
   * own, and acknowledging it when the handler returns. A handler that throws leaves its event
   * pending and ends the consumption ({@link Consumption#failure()} says why).
   */
  public Consumption consume(
      String stream, String group, String consumer, Consumer<Delivery> handler) {
    Consumption consumption = consume(stream, group, consumer);
    consumption.deliverTo(handler);
    return consumption;
  }

  /** Acknowledges events of {@code group}; answers how many were pending. */
  public long ack(String stream, String group, String... ids) {
    return Calls.call(
            () ->
                blocking()
                    .ack(
                        Eventbus.AckRequest.newBuilder()
                            .setStream(stream)
                            .setGroup(group)
                            .addAllIds(List.of(ids))
                            .build()))
        .getAcked();
  }
}
