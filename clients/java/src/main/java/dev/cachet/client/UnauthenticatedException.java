package dev.cachet.client;

/** UNAUTHENTICATED: the credential is missing or not valid. */
public class UnauthenticatedException extends CachetException {
  private static final long serialVersionUID = 1L;

  UnauthenticatedException(Failure failure) {
    super(failure);
  }
}
