package dev.cachet.client;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The grpc-java service config that retries idempotent calls: reads that change nothing, so a
 * second attempt cannot apply anything twice. Writes (Set, Delete, Increment, Acquire, Check,
 * Publish, Append, Ack, ...) are never retried by the client: an UNAVAILABLE write may have been
 * applied before the connection broke, and only the caller knows whether repeating it is safe.
 */
final class RetryPolicy {
  private RetryPolicy() {}

  /** Idempotent methods by service: read-only, so retrying them is always safe. */
  static final Map<String, List<String>> IDEMPOTENT =
      Map.of(
          "cachet.cache.v1.CacheService",
          List.of(
              "Get",
              "GetMany",
              "Exists",
              "GetTtl",
              "GetBit",
              "BitCount",
              "HashGet",
              "HashGetAll",
              "HashKeys",
              "HashValues",
              "HashLength",
              "HashScan",
              "ListRange",
              "ListLength",
              "SetMembers",
              "SetIsMember",
              "SetCardinality",
              "SortedSetRank",
              "SortedSetRange",
              "SortedSetCount",
              "SortedSetScore",
              "SortedSetCardinality"),
          "cachet.lock.v1.LockService",
          List.of("Inspect", "InspectSemaphore"),
          "cachet.ratelimit.v1.RateLimitService",
          List.of("ListPolicies"),
          "cachet.eventbus.v1.EventBusService",
          List.of("Read", "Range", "Pending", "ListPending", "Info"),
          "cachet.admin.v1.AdminService",
          List.of(
              "GetServerInfo",
              "GetServiceStats",
              "GetSlowLog",
              "GetMemoryStats",
              "GetKeyMemoryUsage",
              "ScanKeys",
              "InspectKey",
              "GetBigKeys",
              "ListClients",
              "GetConfig"));

  /** A service config retrying the idempotent methods on UNAVAILABLE, up to maxAttempts. */
  static Map<String, Object> serviceConfig(int maxAttempts, Duration initialBackoff) {
    List<Object> names = new ArrayList<>();
    IDEMPOTENT.forEach(
        (service, methods) ->
            methods.forEach(method -> names.add(Map.of("service", service, "method", method))));
    // grpc-java reads service-config numbers as doubles and durations as "<seconds>s".
    Map<String, Object> retry =
        Map.of(
            "maxAttempts", (double) maxAttempts,
            "initialBackoff", seconds(initialBackoff),
            "maxBackoff", seconds(initialBackoff.multipliedBy(10)),
            "backoffMultiplier", 2.0,
            "retryableStatusCodes", List.of("UNAVAILABLE"));
    return Map.of("methodConfig", List.of(Map.of("name", names, "retryPolicy", retry)));
  }

  private static String seconds(Duration duration) {
    return String.format(java.util.Locale.ROOT, "%.3fs", duration.toNanos() / 1e9);
  }
}
