package dev.cachet.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * Too many requests: a rate-limit check was denied ({@link RateDecision#orThrow()}, reason
 * {@code RATE_LIMITED}), or the server answered RESOURCE_EXHAUSTED (overloaded, a subscriber too
 * slow, an answer too large; the reason says which).
 */
public class RateLimitedException extends CachetException {
  private static final long serialVersionUID = 1L;

  /** The reason of a denied {@link RateLimitClient#check} turned into an exception. */
  public static final String RATE_LIMITED = "RATE_LIMITED";

  private final transient Optional<Duration> retryAfter;

  RateLimitedException(Failure failure) {
    super(failure);
    this.retryAfter = failure.retryAfter();
  }

  static RateLimitedException denied(String key, Optional<Duration> retryAfter) {
    String when = retryAfter.map(delay -> "; retry after " + delay).orElse("");
    return new RateLimitedException(
        new Failure(
            Status.Code.RESOURCE_EXHAUSTED,
            RATE_LIMITED,
            "rate limit of " + key + " exceeded" + when,
            Map.of(),
            Map.of(),
            retryAfter,
            null));
  }

  /**
   * How long to wait before the same request can be admitted; empty when the server did not say
   * (or when the cost exceeds the limit's capacity and can never be admitted).
   */
  public Optional<Duration> retryAfter() {
    return retryAfter;
  }
}
