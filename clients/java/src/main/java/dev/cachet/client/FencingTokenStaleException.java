package dev.cachet.client;

/** A higher fencing token already wrote the key (reason {@code FENCING_TOKEN_STALE}). */
public class FencingTokenStaleException extends AbortedException {
  private static final long serialVersionUID = 1L;

  FencingTokenStaleException(Failure failure) {
    super(failure);
  }
}
