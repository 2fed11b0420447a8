package dev.cachet.client;

import java.time.Duration;
import java.util.Optional;

/**
 * RESOURCE_EXHAUSTED: an answer too large, a subscriber too slow, too many subscribers, Redis out
 * of memory (the reason says which). When the server knows when to come back it is a {@link
 * RateLimitedException}.
 */
public class ResourceExhaustedException extends CachetException {
  private static final long serialVersionUID = 1L;

  private final transient Optional<Duration> retryAfter;

  ResourceExhaustedException(Failure failure) {
    super(failure);
    this.retryAfter = failure.retryAfter();
  }

  /**
   * How long to wait before the same request can be admitted (the server's {@code RetryInfo});
   * empty when it did not say.
   */
  public Optional<Duration> retryAfter() {
    return retryAfter;
  }
}
