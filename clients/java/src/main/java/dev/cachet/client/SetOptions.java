package dev.cachet.client;

import java.time.Duration;
import java.util.List;
import java.util.Objects;
import java.util.OptionalLong;

/**
 * How a {@link CacheClient#set} writes: a TTL (the server's default without one), a condition
 * (compare-and-swap on a version, or only if absent), a fencing token and tags. Immutable: each
 * method answers a new value.
 *
 * <pre>{@code
 * cache.set("user:1", bytes, SetOptions.ttl(Duration.ofMinutes(5)).ifVersion(read.version()));
 * }</pre>
 */
public final class SetOptions {
  private static final SetOptions DEFAULTS =
      new SetOptions(null, false, OptionalLong.empty(), OptionalLong.empty(), List.of());

  final Duration ttl;
  final boolean ifAbsent;
  final OptionalLong ifVersion;
  final OptionalLong fencingToken;
  final List<String> tags;

  private SetOptions(
      Duration ttl,
      boolean ifAbsent,
      OptionalLong ifVersion,
      OptionalLong fencingToken,
      List<String> tags) {
    this.ttl = ttl;
    this.ifAbsent = ifAbsent;
    this.ifVersion = ifVersion;
    this.fencingToken = fencingToken;
    this.tags = tags;
  }

  /** An unconditional write with the server's default TTL. */
  public static SetOptions defaults() {
    return DEFAULTS;
  }

  /** An unconditional write with this TTL. */
  public static SetOptions ttl(Duration ttl) {
    return DEFAULTS.withTtl(ttl);
  }

  /** The same with this TTL (positive, at most the server's maximum). */
  public SetOptions withTtl(Duration ttl) {
    return new SetOptions(Calls.positive(ttl, "ttl"), ifAbsent, ifVersion, fencingToken, tags);
  }

  /** Write only if the key is absent; otherwise {@link KeyExistsException}. */
  public SetOptions ifAbsent() {
    return new SetOptions(ttl, true, ifVersion, fencingToken, tags);
  }

  /**
   * Compare-and-swap: write only if the key's version is {@code version} (0: only if absent);
   * otherwise {@link VersionMismatchException}.
   */
  public SetOptions ifVersion(long version) {
    return new SetOptions(ttl, ifAbsent, OptionalLong.of(version), fencingToken, tags);
  }

  /**
   * Reject the write with {@link FencingTokenStaleException} if a higher fencing token (from a
   * lock) already wrote the key.
   */
  public SetOptions fencingToken(long token) {
    return new SetOptions(ttl, ifAbsent, ifVersion, OptionalLong.of(token), tags);
  }

  /** Tag the value for invalidation by tag. */
  public SetOptions tags(String... tags) {
    for (String tag : tags) {
      Objects.requireNonNull(tag, "tag");
    }
    return new SetOptions(ttl, ifAbsent, ifVersion, fencingToken, List.of(tags));
  }
}
