package dev.cachet.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * Too many requests, come back after {@link #retryAfter()}: a rate-limit check was denied and
 * {@link RateDecision#orThrow()} turned it into an exception (reason {@code RATE_LIMITED}), or the
 * server answered RESOURCE_EXHAUSTED with a {@code RetryInfo} (rate limited or overloaded; the
 * reason says which).
 */
public class RateLimitedException extends ResourceExhaustedException {
  private static final long serialVersionUID = 1L;

  /** The reason of a denied {@link RateLimitClient#check} turned into an exception. */
  public static final String RATE_LIMITED = "RATE_LIMITED";

  RateLimitedException(Failure failure) {
    super(failure);
  }

  static RateLimitedException denied(String key, Optional<Duration> retryAfter) {
    String when = retryAfter.map(delay -> "; retry after " + delay).orElse("");
    return new RateLimitedException(
        new Failure(
            Status.Code.RESOURCE_EXHAUSTED,
            RATE_LIMITED,
            "RESOURCE_EXHAUSTED: rate limit of " + key + " exceeded" + when,
            Map.of(),
            Map.of(),
            retryAfter,
            null));
  }
}
