package dev.cachet.client;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.time.Duration;

/**
 * The example in clients/java/README.md: the lines between the markers are quoted there
 * verbatim (ReadmeExampleTest checks that, and runs them against a live server).
 */
final class ReadmeExample {
  private ReadmeExample() {}

  static void run(String target) {
    // README example: start
    try (CachetClient client = CachetClient.builder().target(target).namespace("shop").build()) {
      client.cache().set("user:1", "alice".getBytes(UTF_8), SetOptions.ttl(Duration.ofMinutes(5)));
      CachedValue user = client.cache().get("user:1").orElseThrow();
      client.cache().set("user:1", "bob".getBytes(UTF_8), SetOptions.defaults().ifVersion(user.version()));
      try (LockHold lock = client.locks().hold("invoice:7", Duration.ofSeconds(10), Duration.ofSeconds(5))) {
        client.cache().set("invoice:7", "paid".getBytes(UTF_8), SetOptions.defaults().fencingToken(lock.fencingToken()));
      }
      RateDecision login = client.rateLimits().check("login:alice", RateLimit.of(5, Duration.ofMinutes(1)));
      client.events().publish("orders", Event.of("invoice 7 paid, login allowed: " + login.allowed()));
    }
    // README example: end
  }
}
