// cachet answers every failure with a gRPC status plus a google.rpc.Status in the
// `grpc-status-details-bin` trailer: ErrorInfo (domain `cachet.dev`, a reason),
// BadRequest for bad input, RetryInfo when a retry time is known. The protos only
// reference these messages (they live in googleapis, not in protos/), so the few
// fields read here are decoded directly from their stable wire format.
import type { ServiceError } from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";

const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

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

/** True for a failed gRPC call (what CachetClient promises reject with). */
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
