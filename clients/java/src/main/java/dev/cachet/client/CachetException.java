package dev.cachet.client;

import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;

/**
 * A failed cachet call: the gRPC status code, the {@code google.rpc.ErrorInfo} reason (for example
 * {@code VERSION_MISMATCH}) and its metadata. Calls throw a subclass when the status or reason has
 * one ({@link LockHeldException}, {@link VersionMismatchException}, ...), this class otherwise. The
 * main README's error table lists every code and reason.
 */
public class CachetException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String reason;
  private final Map<String, String> metadata;

  protected CachetException(Failure failure) {
    super(failure.message(), failure.cause());
    this.code = failure.code();
    this.reason = failure.reason();
    this.metadata = failure.metadata();
  }

  /** The gRPC status code of the failure. */
  public Status.Code code() {
    return code;
  }

  /** The ErrorInfo reason, or the status code's name when the server attached none. */
  public String reason() {
    return reason;
  }

  /** The ErrorInfo metadata (for example {@code current_version}); empty when none. */
  public Map<String, String> metadata() {
    return metadata;
  }

  /** What a failed call said, read once from its status and details. */
  record Failure(
      Status.Code code,
      String reason,
      String message,
      Map<String, String> metadata,
      Map<String, String> fieldViolations,
      Optional<Duration> retryAfter,
      Throwable cause) {}

  /** The typed exception for a failed call. */
  static CachetException from(StatusRuntimeException error) {
    Failure failure = read(error);
    return switch (failure.reason()) {
      case "LOCK_HELD" -> new LockHeldException(failure);
      case "LOCK_NOT_OWNED" -> new LockNotOwnedException(failure);
      case "KEY_EXISTS" -> new KeyExistsException(failure);
      case "VERSION_MISMATCH" -> new VersionMismatchException(failure);
      case "FENCING_TOKEN_STALE" -> new FencingTokenStaleException(failure);
      case "LEASE_LOST" -> new LeaseLostException(failure);
      default -> byCode(failure);
    };
  }

  /**
   * A failure the client itself detected (a local deadline, an interrupt), typed like the server's.
   */
  static CachetException local(Status.Code code, String message, Throwable cause) {
    return byCode(
        new Failure(
            code, code.name(), code + ": " + message, Map.of(), Map.of(), Optional.empty(), cause));
  }

  private static CachetException byCode(Failure failure) {
    return switch (failure.code()) {
      case INVALID_ARGUMENT -> new InvalidArgumentException(failure);
      case NOT_FOUND -> new NotFoundException(failure);
      case FAILED_PRECONDITION -> new FailedPreconditionException(failure);
      case ABORTED -> new AbortedException(failure);
      case RESOURCE_EXHAUSTED ->
          failure.retryAfter().isPresent()
              ? new RateLimitedException(failure)
              : new ResourceExhaustedException(failure);
      case UNAVAILABLE -> new UnavailableException(failure);
      case DEADLINE_EXCEEDED -> new DeadlineExceededException(failure);
      case UNAUTHENTICATED -> new UnauthenticatedException(failure);
      case PERMISSION_DENIED -> new PermissionDeniedException(failure);
      default -> new CachetException(failure);
    };
  }

  private static Failure read(StatusRuntimeException error) {
    Status status = error.getStatus();
    String reason = status.getCode().name();
    Map<String, String> metadata = Map.of();
    Map<String, String> violations = new LinkedHashMap<>();
    Optional<Duration> retryAfter = Optional.empty();
    com.google.rpc.Status details = StatusProto.fromThrowable(error);
    if (details != null) {
      for (com.google.protobuf.Any detail : details.getDetailsList()) {
        try {
          if (detail.is(ErrorInfo.class)) {
            ErrorInfo info = detail.unpack(ErrorInfo.class);
            reason = info.getReason().isEmpty() ? reason : info.getReason();
            metadata = Map.copyOf(info.getMetadataMap());
          } else if (detail.is(BadRequest.class)) {
            for (BadRequest.FieldViolation violation :
                detail.unpack(BadRequest.class).getFieldViolationsList()) {
              violations.put(violation.getField(), violation.getDescription());
            }
          } else if (detail.is(RetryInfo.class)) {
            com.google.protobuf.Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
            retryAfter = Optional.of(Duration.ofSeconds(delay.getSeconds(), delay.getNanos()));
          }
        } catch (com.google.protobuf.InvalidProtocolBufferException malformed) {
          // A detail we cannot decode says nothing we could act on; the status still does.
        }
      }
    }
    String message =
        status.getCode() + (status.getDescription() == null ? "" : ": " + status.getDescription());
    return new Failure(
        status.getCode(), reason, message, metadata, Map.copyOf(violations), retryAfter, error);
  }
}
