package dev.cachet.client;

import cachet.ratelimit.v1.Ratelimit;
import java.time.Duration;

/**
 * An inline limit: {@code limit} hits per {@code period}, counted by an algorithm (the token bucket
 * unless said otherwise). Immutable.
 *
 * <pre>{@code
 * RateLimit.of(100, Duration.ofMinutes(1)).algorithm(RateLimit.Algorithm.SLIDING_WINDOW_LOG)
 * }</pre>
 */
public final class RateLimit {
  /** How hits are counted; the proto's {@code Algorithm} documents each. */
  public enum Algorithm {
    TOKEN_BUCKET(Ratelimit.Algorithm.ALGORITHM_TOKEN_BUCKET),
    GCRA(Ratelimit.Algorithm.ALGORITHM_GCRA),
    FIXED_WINDOW(Ratelimit.Algorithm.ALGORITHM_FIXED_WINDOW),
    SLIDING_WINDOW_LOG(Ratelimit.Algorithm.ALGORITHM_SLIDING_WINDOW_LOG),
    SLIDING_WINDOW_COUNTER(Ratelimit.Algorithm.ALGORITHM_SLIDING_WINDOW_COUNTER);

    final Ratelimit.Algorithm proto;

    Algorithm(Ratelimit.Algorithm proto) {
      this.proto = proto;
    }
  }

  private final long limit;
  private final Duration period;
  private final Algorithm algorithm;
  private final long burst;

  private RateLimit(long limit, Duration period, Algorithm algorithm, long burst) {
    this.limit = limit;
    this.period = period;
    this.algorithm = algorithm;
    this.burst = burst;
  }

  /** {@code limit} hits per {@code period}, as a token bucket of capacity {@code limit}. */
  public static RateLimit of(long limit, Duration period) {
    if (limit < 1) {
      throw new IllegalArgumentException("limit must be at least 1, got " + limit);
    }
    return new RateLimit(limit, Calls.positive(period, "period"), Algorithm.TOKEN_BUCKET, 0);
  }

  public RateLimit algorithm(Algorithm algorithm) {
    return new RateLimit(limit, period, java.util.Objects.requireNonNull(algorithm), burst);
  }

  /** The most hits admitted at once (token bucket and GCRA); default {@code limit}. */
  public RateLimit burst(long burst) {
    return new RateLimit(limit, period, algorithm, burst);
  }

  Ratelimit.Limit proto() {
    return Ratelimit.Limit.newBuilder()
        .setAlgorithm(algorithm.proto)
        .setLimit(limit)
        .setPeriod(Calls.duration(period))
        .setBurst(burst)
        .build();
  }
}
