package dev.cachet.client;

import java.util.Map;

/** INVALID_ARGUMENT: the request was malformed; {@link #fieldViolations()} names each field. */
public class InvalidArgumentException extends CachetException {
  private static final long serialVersionUID = 1L;

  private final Map<String, String> fieldViolations;

  InvalidArgumentException(Failure failure) {
    super(failure);
    this.fieldViolations = failure.fieldViolations();
  }

  /** Each bad field (its path in the request) and what is wrong with it. */
  public Map<String, String> fieldViolations() {
    return fieldViolations;
  }
}
