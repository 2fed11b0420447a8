package dev.cachet.client;

import cachet.ratelimit.v1.RateLimitServiceGrpc;
import cachet.ratelimit.v1.Ratelimit;
import io.grpc.Channel;
import java.time.Duration;
import java.util.Optional;

/** RateLimitService calls in the client's namespace. Thread-safe and immutable. */
public final class RateLimitClient {
  private final Channel channel;
  private final Duration deadline;

  RateLimitClient(Channel channel, Duration deadline) {
    this.channel = channel;
    this.deadline = deadline;
  }

  /** The same calls with this deadline each. */
  public RateLimitClient withDeadline(Duration deadline) {
    return new RateLimitClient(channel, Calls.positive(deadline, "deadline"));
  }

  /** Consumes one hit of {@code key} against {@code limit}. A denial is an answer, not an error. */
  public RateDecision check(String key, RateLimit limit) {
    return check(key, limit, 1);
  }

  /** Consumes {@code hits} (0 peeks without consuming). */
  public RateDecision check(String key, RateLimit limit, long hits) {
    Ratelimit.RateLimitTarget target =
        Ratelimit.RateLimitTarget.newBuilder()
            .setInlineLimit(Ratelimit.InlineLimit.newBuilder().setKey(key).setLimit(limit.proto()))
            .build();
    return check(key, target, hits);
  }

  /** Consumes one hit of {@code key} under the server's named policy {@code policy}. */
  public RateDecision checkPolicy(String policy, String key) {
    Ratelimit.RateLimitTarget target =
        Ratelimit.RateLimitTarget.newBuilder()
            .setPolicy(Ratelimit.PolicyRef.newBuilder().setName(policy).setKey(key))
            .build();
    return check(key, target, 1);
  }

  private RateDecision check(String key, Ratelimit.RateLimitTarget target, long hits) {
    if (hits < 0) {
      throw new IllegalArgumentException("hits must not be negative, got " + hits);
    }
    Ratelimit.CheckRequest request =
        Ratelimit.CheckRequest.newBuilder().setTarget(target).setHits(hits).build();
    Ratelimit.CheckResult result =
        Calls.call(
                () ->
                    Calls.withDeadline(RateLimitServiceGrpc.newBlockingStub(channel), deadline)
                        .check(request))
            .getResult();
    return new RateDecision(
        key,
        result.getAllowed(),
        result.getLimit(),
        result.getRemaining(),
        result.hasRetryAfter()
            ? Optional.of(Calls.duration(result.getRetryAfter()))
            : Optional.empty(),
        Calls.duration(result.getResetAfter()));
  }
}
