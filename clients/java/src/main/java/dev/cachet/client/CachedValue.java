package dev.cachet.client;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** A value read from the cache, with the version to pass to {@link SetOptions#ifVersion}. */
public final class CachedValue {
  private final byte[] bytes;
  private final long version;

  CachedValue(byte[] bytes, long version) {
    this.bytes = bytes;
    this.version = version;
  }

  /** The value (a copy). */
  public byte[] bytes() {
    return bytes.clone();
  }

  /** The value decoded as UTF-8. */
  public String asString() {
    return new String(bytes, StandardCharsets.UTF_8);
  }

  /** The version: changes on every write of the key, never repeats (an unsigned 64-bit number). */
  public long version() {
    return version;
  }

  @Override
  public boolean equals(Object other) {
    return other instanceof CachedValue value
        && value.version == version
        && Arrays.equals(value.bytes, bytes);
  }

  @Override
  public int hashCode() {
    return 31 * Long.hashCode(version) + Arrays.hashCode(bytes);
  }

  /** Says the size and version, never the value (cached values stay out of logs). */
  @Override
  public String toString() {
    return "CachedValue{"
        + bytes.length
        + " bytes, version "
        + Long.toUnsignedString(version)
        + "}";
  }
}
