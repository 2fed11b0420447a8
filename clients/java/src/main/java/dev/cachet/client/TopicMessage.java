package dev.cachet.client;

/**
 * An event received by a {@link Subscription}.
 *
 * @param topic the topic it was published to
 * @param pattern the subscribed pattern that matched it; empty for an exact topic subscription
 * @param event the event as published
 */
public record TopicMessage(String topic, String pattern, Event event) {}
