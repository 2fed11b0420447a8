package dev.cachet.client;

/** NOT_FOUND: a named rate-limit policy does not exist (reason {@code POLICY_NOT_FOUND}). */
public class NotFoundException extends CachetException {
  private static final long serialVersionUID = 1L;

  NotFoundException(Failure failure) {
    super(failure);
  }
}
