package dev.cachet.client;

/** FAILED_PRECONDITION: a condition on the current state does not hold (the reason says which). */
public class FailedPreconditionException extends CachetException {
  private static final long serialVersionUID = 1L;

  FailedPreconditionException(Failure failure) {
    super(failure);
  }
}
