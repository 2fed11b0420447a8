package dev.cachet.client;

import java.util.OptionalLong;

/** A compare-and-swap {@code Set} found another version (reason {@code VERSION_MISMATCH}). */
public class VersionMismatchException extends AbortedException {
  private static final long serialVersionUID = 1L;

  VersionMismatchException(Failure failure) {
    super(failure);
  }

  /** The key's version when the write was refused (0: absent), when the server said. */
  public OptionalLong currentVersion() {
    String version = metadata().get("current_version");
    if (version == null || version.isEmpty()) {
      return OptionalLong.empty();
    }
    return OptionalLong.of(Long.parseUnsignedLong(version));
  }
}
