package dev.cachet.client;

/** The owner token does not own the lock any more (reason {@code LOCK_NOT_OWNED}). */
public class LockNotOwnedException extends FailedPreconditionException {
  private static final long serialVersionUID = 1L;

  LockNotOwnedException(Failure failure) {
    super(failure);
  }
}
