package dev.cachet.client;

/** PERMISSION_DENIED: the credential is not allowed this namespace or role. */
public class PermissionDeniedException extends CachetException {
  private static final long serialVersionUID = 1L;

  PermissionDeniedException(Failure failure) {
    super(failure);
  }
}
