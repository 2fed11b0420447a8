package dev.cachet.client;

import java.time.Duration;
import java.util.Optional;

/** The lock is held by another owner and the wait ran out (reason {@code LOCK_HELD}). */
public class LockHeldException extends FailedPreconditionException {
  private static final long serialVersionUID = 1L;

  LockHeldException(Failure failure) {
    super(failure);
  }

  /** The holder's remaining TTL when the server refused, when it said. */
  public Optional<Duration> remainingTtl() {
    String millis = metadata().get("remaining_ttl_ms");
    return millis == null
        ? Optional.empty()
        : Optional.of(Duration.ofMillis(Long.parseLong(millis)));
  }
}
