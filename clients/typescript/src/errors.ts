// cachet answers every failure with a gRPC status plus a google.rpc.Status in the
// `grpc-status-details-bin` trailer: ErrorInfo (domain `cachet.dev`, a reason),
// BadRequest for bad input, RetryInfo when a retry time is known. The protos only
// reference these messages (they live in googleapis, not in protos/), so the few
// fields read here are decoded directly from their stable wire format.
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";

const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";
const ERROR_DOMAIN = "cachet.dev";

export interface FieldViolation {
  field: string;
  description: string;
}

/** What a failed call's google.rpc.Status says. */
export interface ErrorDetails {
  /** The gRPC status code (`status.ABORTED`, ...). */
  code: number;
  message: string;
  /** google.rpc.ErrorInfo reason, e.g. `VERSION_MISMATCH`. */
  reason?: string;
  /** google.rpc.ErrorInfo domain: `cachet.dev`. */
  domain?: string;
  /** google.rpc.ErrorInfo metadata. */
  metadata: Record<string, string>;
  /** google.rpc.BadRequest field violations (INVALID_ARGUMENT). */
  fieldViolations: FieldViolation[];
  /** google.rpc.RetryInfo delay, in milliseconds. */
  retryDelayMs?: number;
}

/** True for a failed gRPC call (a CachetError is one too). */
export function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number" &&
    (error as Partial<ServiceError>).metadata !== undefined;
}

/** The google.rpc details of a failed call, or undefined when it carries none. */
export function errorDetails(error: unknown): ErrorDetails | undefined {
  if (!isServiceError(error)) {
    return undefined;
  }
  const [raw] = error.metadata.get(STATUS_DETAILS_TRAILER);
  if (!(raw instanceof Uint8Array)) {
    return undefined;
  }
  const details: ErrorDetails = { code: error.code, message: "", metadata: {}, fieldViolations: [] };
  readFields(raw, (field, reader) => {
    if (field === 1) details.code = reader.int32();
    else if (field === 2) details.message = reader.string();
    else if (field === 3) readAny(reader.bytes(), details);
    else return false;
    return true;
  });
  return details;
}

/** The google.rpc.ErrorInfo reason of a failed call, or undefined. */
export function errorReason(error: unknown): string | undefined {
  return errorDetails(error)?.reason;
}

function readAny(bytes: Uint8Array, details: ErrorDetails): void {
  let typeUrl = "";
  let value: Uint8Array = new Uint8Array();
  readFields(bytes, (field, reader) => {
    if (field === 1) typeUrl = reader.string();
    else if (field === 2) value = reader.bytes();
    else return false;
    return true;
  });
  switch (typeUrl.slice(TYPE_PREFIX.length)) {
    case "google.rpc.ErrorInfo":
      readFields(value, (field, reader) => {
        if (field === 1) details.reason = reader.string();
        else if (field === 2) details.domain = reader.string();
        else if (field === 3) {
          const entry = readPair(reader.bytes());
          details.metadata[entry.first] = entry.second;
        } else return false;
        return true;
      });
      break;
    case "google.rpc.BadRequest":
      readFields(value, (field, reader) => {
        if (field !== 1) return false;
        const violation = readPair(reader.bytes());
        details.fieldViolations.push({ field: violation.first, description: violation.second });
        return true;
      });
      break;
    case "google.rpc.RetryInfo":
      readFields(value, (field, reader) => {
        if (field !== 1) return false;
        let seconds = 0;
        let nanos = 0;
        readFields(reader.bytes(), (durationField, duration) => {
          if (durationField === 1) seconds = Number(duration.int64());
          else if (durationField === 2) nanos = duration.int32();
          else return false;
          return true;
        });
        details.retryDelayMs = seconds * 1000 + nanos / 1e6;
        return true;
      });
      break;
  }
}

/** Fields 1 and 2 as strings: a map entry, or a BadRequest.FieldViolation. */
function readPair(bytes: Uint8Array): { first: string; second: string } {
  const pair = { first: "", second: "" };
  readFields(bytes, (field, reader) => {
    if (field === 1) pair.first = reader.string();
    else if (field === 2) pair.second = reader.string();
    else return false;
    return true;
  });
  return pair;
}

/** Calls `read` for each field; fields it does not consume (returns false) are skipped. */
function readFields(bytes: Uint8Array, read: (field: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!read(field, reader)) {
      reader.skip(wireType);
    }
  }
}

/**
 * A failed cachet call: the gRPC status plus the google.rpc details cachet attaches.
 * Every wrapper call rejects with one (or a subclass: check with `instanceof`); it is
 * also a grpc-js ServiceError, so `code`, `details` and `metadata` (the trailers) keep
 * their meaning. `toCachetError` converts an error of a raw stub.
 */
export class CachetError extends Error implements ServiceError {
  /** The gRPC status code (`status.ABORTED`, ...). */
  readonly code: status;
  /** The status message. */
  readonly details: string;
  /** The response trailers. */
  readonly metadata: Metadata;
  /** google.rpc.ErrorInfo reason, e.g. `VERSION_MISMATCH`. */
  readonly reason?: string;
  /** google.rpc.ErrorInfo metadata, e.g. `current_version`. */
  readonly errorMetadata: Record<string, string>;
  /** google.rpc.BadRequest field violations (INVALID_ARGUMENT). */
  readonly fieldViolations: FieldViolation[];
  /** google.rpc.RetryInfo delay in milliseconds (rate limited, overloaded). */
  readonly retryAfterMs?: number;

  constructor(code: status, details: string, metadata: Metadata = new Metadata(), parsed?: ErrorDetails, cause?: unknown) {
    super(`${status[code] ?? code}${parsed?.reason ? ` ${parsed.reason}` : ""}: ${details}`, { cause });
    this.name = new.target.name;
    this.code = code;
    this.details = details;
    this.metadata = metadata;
    this.reason = parsed?.reason;
    this.errorMetadata = parsed?.metadata ?? {};
    this.fieldViolations = parsed?.fieldViolations ?? [];
    this.retryAfterMs = parsed?.retryDelayMs;
  }
}

export class InvalidArgumentError extends CachetError {}
export class NotFoundError extends CachetError {}
export class FailedPreconditionError extends CachetError {}
export class AbortedError extends CachetError {}
export class ResourceExhaustedError extends CachetError {}
/** RESOURCE_EXHAUSTED with a RetryInfo: wait `retryAfterMs` and try again. */
export class RateLimitedError extends ResourceExhaustedError {}
export class PermissionDeniedError extends CachetError {}
export class UnauthenticatedError extends CachetError {}
export class UnavailableError extends CachetError {}
export class DeadlineExceededError extends CachetError {}
/** The call was cancelled, e.g. by its AbortSignal (`cause` is the signal's reason). */
export class CancelledError extends CachetError {}
export class UnimplementedError extends CachetError {}
export class KeyExistsError extends FailedPreconditionError {}
export class KeyNotFoundError extends FailedPreconditionError {}
export class WrongTypeError extends FailedPreconditionError {}
export class NotANumberError extends FailedPreconditionError {}
export class CrossSlotError extends FailedPreconditionError {}
export class LockHeldError extends FailedPreconditionError {}
export class LockNotOwnedError extends FailedPreconditionError {}
export class SemaphoreFullError extends FailedPreconditionError {}
export class GroupNotFoundError extends FailedPreconditionError {}
export class GroupExistsError extends FailedPreconditionError {}
export class StreamNotFoundError extends FailedPreconditionError {}
export class VersionMismatchError extends AbortedError {}
export class FencingTokenStaleError extends AbortedError {}
export class LeaseLostError extends AbortedError {}
export class PolicyNotFoundError extends NotFoundError {}
export class NamespaceNotGrantedError extends PermissionDeniedError {}
export class RoleNotGrantedError extends PermissionDeniedError {}
/** The credential expired: refresh it (a `token` function is asked again on the next call). */
export class CredentialExpiredError extends UnauthenticatedError {}

type ErrorClass = new (...args: ConstructorParameters<typeof CachetError>) => CachetError;

const BY_REASON: Record<string, ErrorClass> = {
  KEY_EXISTS: KeyExistsError,
  KEY_NOT_FOUND: KeyNotFoundError,
  WRONG_TYPE: WrongTypeError,
  NOT_A_NUMBER: NotANumberError,
  CROSS_SLOT: CrossSlotError,
  LOCK_HELD: LockHeldError,
  LOCK_NOT_OWNED: LockNotOwnedError,
  SEMAPHORE_FULL: SemaphoreFullError,
  GROUP_NOT_FOUND: GroupNotFoundError,
  GROUP_EXISTS: GroupExistsError,
  STREAM_NOT_FOUND: StreamNotFoundError,
  VERSION_MISMATCH: VersionMismatchError,
  FENCING_TOKEN_STALE: FencingTokenStaleError,
  LEASE_LOST: LeaseLostError,
  POLICY_NOT_FOUND: PolicyNotFoundError,
  NAMESPACE_NOT_GRANTED: NamespaceNotGrantedError,
  ROLE_NOT_GRANTED: RoleNotGrantedError,
  CREDENTIAL_EXPIRED: CredentialExpiredError,
};

const BY_CODE: Partial<Record<status, ErrorClass>> = {
  [status.INVALID_ARGUMENT]: InvalidArgumentError,
  [status.NOT_FOUND]: NotFoundError,
  [status.FAILED_PRECONDITION]: FailedPreconditionError,
  [status.ABORTED]: AbortedError,
  [status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [status.PERMISSION_DENIED]: PermissionDeniedError,
  [status.UNAUTHENTICATED]: UnauthenticatedError,
  [status.UNAVAILABLE]: UnavailableError,
  [status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [status.CANCELLED]: CancelledError,
  [status.UNIMPLEMENTED]: UnimplementedError,
};

/** The CachetError subclass for a failed gRPC call; any other value is answered as is. */
export function toCachetError(error: unknown, cause?: unknown): unknown {
  if (error instanceof CachetError || !isServiceError(error)) {
    return error;
  }
  const parsed = errorDetails(error);
  return new (errorClass(error.code, parsed))(error.code, error.details, error.metadata, parsed, cause ?? error);
}

function errorClass(code: status, parsed: ErrorDetails | undefined): ErrorClass {
  const byReason = parsed?.reason ? BY_REASON[parsed.reason] : undefined;
  const byCode = BY_CODE[code];
  // A reason's class only where it refines the code's (it always does with cachet).
  if (byReason && (!byCode || byReason.prototype instanceof byCode)) return byReason;
  if (code === status.RESOURCE_EXHAUSTED && parsed?.retryDelayMs !== undefined) return RateLimitedError;
  return byCode ?? CachetError;
}

/** What a Batch or Session result says of an operation that failed (cachev1.OperationStatus). */
export interface OperationStatus {
  code: number;
  message: string;
  reason: string;
  metadata: Record<string, string>;
}

/**
 * The error of one failed operation of a Batch or a Session, as the unary call would
 * have rejected with it: the same class, `reason` and `errorMetadata`, and trailers
 * holding the same google.rpc.Status (so `errorDetails` and `errorReason` read it too).
 * An OperationStatus carries no BadRequest: `fieldViolations` stays empty, the status
 * message names the field.
 */
export function operationError(operation: OperationStatus): CachetError {
  const statusDetails = new BinaryWriter().uint32(8).int32(operation.code).uint32(18).string(operation.message);
  if (operation.reason !== "") {
    const info = new BinaryWriter().uint32(10).string(operation.reason).uint32(18).string(ERROR_DOMAIN);
    for (const [key, value] of Object.entries(operation.metadata)) {
      info.uint32(26).fork().uint32(10).string(key).uint32(18).string(value).join();
    }
    const any = new BinaryWriter().uint32(10).string(`${TYPE_PREFIX}google.rpc.ErrorInfo`).uint32(18).bytes(info.finish());
    statusDetails.uint32(26).bytes(any.finish());
  }
  const trailers = new Metadata();
  trailers.set(STATUS_DETAILS_TRAILER, Buffer.from(statusDetails.finish()));
  const parsed = errorDetails(Object.assign(new Error(operation.message), { code: operation.code, details: operation.message, metadata: trailers }));
  return new (errorClass(operation.code, parsed))(operation.code, operation.message, trailers, parsed);
}
