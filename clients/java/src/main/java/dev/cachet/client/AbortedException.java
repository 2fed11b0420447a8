package dev.cachet.client;

/** ABORTED: a concurrent writer won, or what the call relied on changed; re-read and retry. */
public class AbortedException extends CachetException {
  private static final long serialVersionUID = 1L;

  AbortedException(Failure failure) {
    super(failure);
  }
}
