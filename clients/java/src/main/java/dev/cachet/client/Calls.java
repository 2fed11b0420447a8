package dev.cachet.client;

import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/** What every sub-client shares: the stub deadline and the error translation. */
final class Calls {
  private Calls() {}

  /** Runs a call and turns its gRPC status into the typed cachet exception. */
  static <T> T call(Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException error) {
      throw CachetException.from(error);
    }
  }

  static <S extends io.grpc.stub.AbstractStub<S>> S withDeadline(S stub, Duration deadline) {
    return deadline == null
        ? stub
        : stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
  }

  static com.google.protobuf.Duration duration(Duration duration) {
    return com.google.protobuf.Duration.newBuilder()
        .setSeconds(duration.getSeconds())
        .setNanos(duration.getNano())
        .build();
  }

  static Duration duration(com.google.protobuf.Duration duration) {
    return Duration.ofSeconds(duration.getSeconds(), duration.getNanos());
  }

  static java.time.Instant instant(com.google.protobuf.Timestamp timestamp) {
    return java.time.Instant.ofEpochSecond(timestamp.getSeconds(), timestamp.getNanos());
  }

  static com.google.protobuf.Timestamp timestamp(java.time.Instant instant) {
    return com.google.protobuf.Timestamp.newBuilder()
        .setSeconds(instant.getEpochSecond())
        .setNanos(instant.getNano())
        .build();
  }

  static Duration positive(Duration duration, String what) {
    if (duration == null || duration.isNegative() || duration.isZero()) {
      throw new IllegalArgumentException(what + " must be a positive duration, got " + duration);
    }
    return duration;
  }
}
