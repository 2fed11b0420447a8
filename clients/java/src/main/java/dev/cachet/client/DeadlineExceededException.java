package dev.cachet.client;

/** DEADLINE_EXCEEDED: the call's deadline passed before it finished. */
public class DeadlineExceededException extends CachetException {
  private static final long serialVersionUID = 1L;

  DeadlineExceededException(Failure failure) {
    super(failure);
  }
}
