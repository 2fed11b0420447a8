package dev.cachet.client;

/** A held lock or a fill lease was lost (reason {@code LEASE_LOST}): stop acting as its holder. */
public class LeaseLostException extends AbortedException {
  private static final long serialVersionUID = 1L;

  LeaseLostException(Failure failure) {
    super(failure);
  }
}
