package dev.cachet.client;

/** A {@code Set} with {@code ifAbsent} found the key present (reason {@code KEY_EXISTS}). */
public class KeyExistsException extends FailedPreconditionException {
  private static final long serialVersionUID = 1L;

  KeyExistsException(Failure failure) {
    super(failure);
  }
}
