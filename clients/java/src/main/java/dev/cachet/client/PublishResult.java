package dev.cachet.client;

/**
 * What a publish reached.
 *
 * @param receivers how many subscriptions received the event (0: nobody listened, it is gone)
 * @param id the event's id (the publisher's or the server's)
 */
public record PublishResult(long receivers, String id) {}
