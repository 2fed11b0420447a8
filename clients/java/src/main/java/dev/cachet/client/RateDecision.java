package dev.cachet.client;

import java.time.Duration;
import java.util.Optional;

/**
 * The answer of a rate-limit check, decided on Redis time. A denied check consumed nothing, so
 * retrying after {@link #retryAfter()} is meaningful.
 *
 * @param key the limited key
 * @param allowed whether the hits were admitted
 * @param limit the capacity of the applied limit
 * @param remaining hits still admissible now
 * @param retryAfter when denied, how long until the same hits would be admitted (empty when
 *     allowed, or when the cost exceeds the capacity)
 * @param resetAfter how long until the allowance is full again if no hits arrive
 */
public record RateDecision(
    String key,
    boolean allowed,
    long limit,
    long remaining,
    Optional<Duration> retryAfter,
    Duration resetAfter) {

  /** This decision when allowed; {@link RateLimitedException} (with retryAfter) when denied. */
  public RateDecision orThrow() {
    if (!allowed) {
      throw RateLimitedException.denied(key, retryAfter);
    }
    return this;
  }
}
