// What the calls that Batch and Session carry send, and how their answers read: one
// place, used by the unary wrappers (cache.ts) and by Batch, Session and Batcher
// (batch.ts), so an operation means the same on all four paths.
import { status } from "@grpc/grpc-js";
import { CachetError, operationError } from "./errors";
import {
  type BatchOperation,
  type BatchResult,
  type CollectionTtl,
  type DeleteResponse,
  type GetRequest,
  type GetResponse,
  type HashGetResponse,
  type HashSetRequest,
  type IncrementRequest,
  SetCondition,
  SetRequest,
} from "./gen/cachet/cache/v1/cache";
import { duration, requestId } from "./transport";
import type { Bytes, CollectionOptions, IncrementOptions, SetOptions, Value } from "./cache";

export const bytes = (value: Bytes): Buffer => Buffer.from(value);

export function collectionTtl(options: CollectionOptions): CollectionTtl | undefined {
  if (options.ttlMs === undefined && !options.refreshTtl) return undefined;
  return { ttl: duration(options.ttlMs), refreshTtl: options.refreshTtl ?? false };
}

export const getRequest = (key: string): GetRequest => ({ key, includeTtl: false, earlyRefreshBeta: 0 });

export const readValue = (reply: GetResponse): Value | undefined => (reply.found ? { data: reply.value, version: reply.version } : undefined);

export function setRequest(key: string, value: Bytes, options: SetOptions): SetRequest {
  const condition = options.ifAbsent
    ? SetCondition.SET_CONDITION_IF_ABSENT
    : options.ifPresent
      ? SetCondition.SET_CONDITION_IF_PRESENT
      : SetCondition.SET_CONDITION_UNSPECIFIED;
  return SetRequest.fromPartial({
    key,
    value: bytes(value),
    ttl: duration(options.ttlMs),
    keepTtl: options.keepTtl ?? false,
    condition,
    ifVersion: options.ifVersion,
    tags: options.tags ?? [],
    fencingToken: options.fencingToken,
    recomputeTime: duration(options.recomputeTimeMs),
  });
}

export const deleteRequest = (keys: string | string[]) => ({ keys: ([] as string[]).concat(keys) });

export const readDeleted = (reply: DeleteResponse): number => Number(reply.deleted);

/** A fresh request_id per logical call: a retried Increment applies once. */
export function incrementRequest(key: string, by: { int: number | bigint } | { float: number }, options: IncrementOptions): IncrementRequest {
  return {
    key,
    byInt: "int" in by ? BigInt(by.int) : undefined,
    byFloat: "float" in by ? by.float : undefined,
    ttl: duration(options.ttlMs),
    requestId: requestId(),
  };
}

export const expireRequest = (key: string, ttlMs: number) => ({ key, ttl: duration(ttlMs) });

export const hashGetRequest = (key: string, fields: string[]) => ({ key, fields });

export const readHashFields = (reply: HashGetResponse): (Buffer | undefined)[] => reply.fields.map((f) => (f.found ? f.value : undefined));

export function hashSetRequest(key: string, fields: Record<string, Bytes>, options: HashSetOptions): HashSetRequest {
  return {
    key,
    fields: Object.entries(fields).map(([field, value]) => ({ field, value: bytes(value) })),
    ifAbsent: options.ifAbsent ?? false,
    ttl: collectionTtl(options),
  };
}

export type HashSetOptions = CollectionOptions & { ifAbsent?: boolean };

/** One operation of a Batch or a Session: what it sends, and how its result reads. */
export interface Operation<T> {
  /** The unary RPC of the same kind, whose retry policy the operation has. */
  method: string;
  operation: BatchOperation;
  read(result: BatchResult): T;
}

/** An operation's outcome, as `Promise.allSettled` reports one: its value, or the error the unary call would reject with. */
export type OperationResult<T> = PromiseFulfilledResult<T> | OperationFailure;

export interface OperationFailure extends PromiseRejectedResult {
  reason: CachetError;
}

/** The answer of the unary call of the same name, from a result of that kind. */
function answer<Kind extends Exclude<keyof BatchResult, "status">>(result: BatchResult, kind: Kind): NonNullable<BatchResult[Kind]> {
  const reply = result[kind];
  if (reply === undefined) {
    throw new CachetError(status.INTERNAL, `the server answered a ${kind} operation without its ${kind} result`);
  }
  return reply;
}

/** The operations Batch and Session carry, taking the arguments of the unary wrappers (without call options). */
export const operations = {
  get: (key: string): Operation<Value | undefined> => ({
    method: "Get",
    operation: { get: getRequest(key) },
    read: (result) => readValue(answer(result, "get")),
  }),
  set: (key: string, value: Bytes, options: SetOptions = {}): Operation<bigint> => ({
    method: "Set",
    operation: { set: setRequest(key, value, options) },
    read: (result) => answer(result, "set").version,
  }),
  delete: (keys: string | string[]): Operation<number> => ({
    method: "Delete",
    operation: { delete: deleteRequest(keys) },
    read: (result) => readDeleted(answer(result, "delete")),
  }),
  increment: (key: string, by: number | bigint, options: IncrementOptions = {}): Operation<bigint> => ({
    method: "Increment",
    operation: { increment: incrementRequest(key, { int: by }, options) },
    read: (result) => answer(result, "increment").intValue,
  }),
  incrementFloat: (key: string, by: number, options: IncrementOptions = {}): Operation<number> => ({
    method: "Increment",
    operation: { increment: incrementRequest(key, { float: by }, options) },
    read: (result) => answer(result, "increment").floatValue,
  }),
  expire: (key: string, ttlMs: number): Operation<boolean> => ({
    method: "Expire",
    operation: { expire: expireRequest(key, ttlMs) },
    read: (result) => answer(result, "expire").found,
  }),
  hashGet: (key: string, fields: string[]): Operation<(Buffer | undefined)[]> => ({
    method: "HashGet",
    operation: { hashGet: hashGetRequest(key, fields) },
    read: (result) => readHashFields(answer(result, "hashGet")),
  }),
  hashSet: (key: string, fields: Record<string, Bytes>, options: HashSetOptions = {}): Operation<number> => ({
    method: "HashSet",
    operation: { hashSet: hashSetRequest(key, fields, options) },
    read: (result) => Number(answer(result, "hashSet").added),
  }),
};

/** A result as its operation's outcome: a failed status is the unary call's error. */
export function settle<T>(operation: Operation<T>, result: BatchResult | undefined): OperationResult<T> {
  if (result === undefined) {
    return { status: "rejected", reason: new CachetError(status.INTERNAL, "the server answered fewer results than operations") };
  }
  if (result.status !== undefined && result.status.code !== status.OK) {
    return { status: "rejected", reason: operationError(result.status) };
  }
  try {
    return { status: "fulfilled", value: operation.read(result) };
  } catch (error) {
    return { status: "rejected", reason: error as CachetError };
  }
}
