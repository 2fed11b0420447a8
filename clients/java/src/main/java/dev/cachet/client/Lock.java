package dev.cachet.client;

import java.time.Duration;
import java.time.Instant;

/**
 * A granted lock. Pass {@link #fencingToken()} with every write the lock protects (for example
 * {@link SetOptions#fencingToken}); release it with {@link LockClient#release}.
 *
 * @param name the lock's name
 * @param ownerToken the secret proving ownership (never logged: {@link #toString()} hides it)
 * @param fencingToken larger than every earlier grant's token for this name
 * @param expireTime Redis time at which the grant ends unless extended
 * @param waited how long the acquire waited for the lock (zero if it was free)
 */
public record Lock(
    String name, String ownerToken, long fencingToken, Instant expireTime, Duration waited) {
  @Override
  public String toString() {
    return "Lock{"
        + name
        + ", fencing token "
        + Long.toUnsignedString(fencingToken)
        + ", expires "
        + expireTime
        + "}";
  }
}
