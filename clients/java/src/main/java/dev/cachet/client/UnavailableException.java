package dev.cachet.client;

/**
 * UNAVAILABLE: the server or its Redis could not be reached; idempotent reads were already retried.
 */
public class UnavailableException extends CachetException {
  private static final long serialVersionUID = 1L;

  UnavailableException(Failure failure) {
    super(failure);
  }
}
