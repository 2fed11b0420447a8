// A thin promise wrapper over the generated CacheService stub (ts-proto + @grpc/grpc-js).
// Every call carries the client's namespace in `cachet-namespace` metadata and a deadline;
// failures reject with the grpc-js ServiceError (read its google.rpc details with
// `errorDetails`).
import {
  type CallOptions,
  type ChannelCredentials,
  type Client,
  type ClientOptions,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  InterceptingCall,
  type Interceptor,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import { CacheServiceClient, SetCondition } from "./gen/cachet/cache/v1/cache";
import type { Duration } from "./gen/google/protobuf/duration";

export { errorDetails, errorReason, isServiceError, type ErrorDetails, type FieldViolation } from "./errors";
export { status } from "@grpc/grpc-js";
export * from "./nearcache";
// The generated modules of every service, named like the Go packages.
export * as adminv1 from "./gen/cachet/admin/v1/admin";
export * as cachev1 from "./gen/cachet/cache/v1/cache";
export * as eventbusv1 from "./gen/cachet/eventbus/v1/eventbus";
export * as lockv1 from "./gen/cachet/lock/v1/lock";
export * as ratelimitv1 from "./gen/cachet/ratelimit/v1/ratelimit";
export * as envoyratelimitv3 from "./gen/envoy/service/ratelimit/v3/rls";

export const NAMESPACE_METADATA = "cachet-namespace";

export interface CachetClientOptions {
  /** The namespace every call runs in. Default `default`. */
  namespace?: string;
  /** Channel credentials. Default: plaintext. */
  credentials?: ChannelCredentials;
  /** Deadline of each wrapper call in milliseconds. Default 5000. */
  timeoutMs?: number;
}

/** A cached value and the version to pass as `ifVersion` for compare-and-swap. */
export interface Value {
  data: Buffer;
  version: bigint;
}

export interface SetOptions {
  /** Time to live in milliseconds. Default: the server's default TTL. */
  ttlMs?: number;
  /** Write only if the key does not exist (FAILED_PRECONDITION `KEY_EXISTS` otherwise). */
  ifAbsent?: boolean;
  /** Write only if the key's current version is this (ABORTED `VERSION_MISMATCH` otherwise). */
  ifVersion?: bigint;
  /** Reject the write if a higher LockService fencing token already wrote the key. */
  fencingToken?: bigint;
  /** Tags for InvalidateTags. */
  tags?: string[];
}

export interface IncrementOptions {
  /** TTL in milliseconds given to a counter this call creates. Default: the server's default TTL. */
  ttlMs?: number;
}

type ClientConstructor<T extends Client> = new (
  address: string,
  credentials: ChannelCredentials,
  options?: Partial<ClientOptions>,
) => T;

type UnaryMethod<Request, Response> = (
  request: Request,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Response) => void,
) => ClientUnaryCall;

/** One channel to a cachet server, scoped to one namespace. */
export class CachetClient {
  readonly namespace: string;
  /** The generated CacheService stub, for the RPCs this wrapper does not cover. */
  readonly cache: CacheServiceClient;
  private readonly target: string;
  private readonly credentials: ChannelCredentials;
  private readonly timeoutMs: number;
  private readonly interceptors: Interceptor[];

  constructor(target: string, options: CachetClientOptions = {}) {
    this.target = target;
    this.namespace = options.namespace ?? "default";
    this.credentials = options.credentials ?? grpcCredentials.createInsecure();
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.interceptors = [namespaceInterceptor(this.namespace)];
    this.cache = new CacheServiceClient(target, this.credentials, { interceptors: this.interceptors });
  }

  /**
   * A generated stub of another service (e.g. `LockServiceClient`) on this client's
   * channel, sending this client's namespace.
   */
  stub<T extends Client>(constructor: ClientConstructor<T>): T {
    return new constructor(this.target, this.credentials, {
      channelOverride: this.cache.getChannel(),
      interceptors: this.interceptors,
    });
  }

  /** Reads key; undefined when it is absent. */
  async get(key: string): Promise<Value | undefined> {
    const reply = await this.unary(this.cache.get, { key, includeTtl: false, earlyRefreshBeta: 0 });
    return reply.found ? { data: reply.value, version: reply.version } : undefined;
  }

  /** Writes value under key; resolves to its new version. */
  async set(key: string, value: Uint8Array | string, options: SetOptions = {}): Promise<bigint> {
    const reply = await this.unary(this.cache.set, {
      key,
      value: Buffer.from(value),
      ttl: duration(options.ttlMs),
      keepTtl: false,
      condition: options.ifAbsent ? SetCondition.SET_CONDITION_IF_ABSENT : SetCondition.SET_CONDITION_UNSPECIFIED,
      ifVersion: options.ifVersion,
      returnPrevious: false,
      tags: options.tags ?? [],
      fencingToken: options.fencingToken,
      recomputeTime: undefined,
    });
    return reply.version;
  }

  /** Removes keys; resolves to how many existed. */
  async delete(...keys: string[]): Promise<number> {
    const reply = await this.unary(this.cache.delete, { keys });
    return Number(reply.deleted);
  }

  /** Adds `by` (default 1) to the integer counter at key; resolves to its new value. */
  async increment(key: string, by: number | bigint = 1, options: IncrementOptions = {}): Promise<bigint> {
    const reply = await this.unary(this.cache.increment, {
      key,
      byInt: BigInt(by),
      byFloat: undefined,
      ttl: duration(options.ttlMs),
      requestId: "",
    });
    return reply.intValue;
  }

  /** Closes the channel (shared by every stub from `stub`). */
  close(): void {
    this.cache.close();
  }

  private unary<Request, Response>(method: UnaryMethod<Request, Response>, request: Request): Promise<Response> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      method.call(this.cache, request, new Metadata(), { deadline }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }
}

/** Adds the namespace to each call unless the caller's metadata already names one. */
function namespaceInterceptor(namespace: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        if (metadata.get(NAMESPACE_METADATA).length === 0) {
          metadata.set(NAMESPACE_METADATA, namespace);
        }
        next(metadata, listener);
      },
    });
}

function duration(ms: number | undefined): Duration | undefined {
  if (ms === undefined) {
    return undefined;
  }
  const whole = Math.floor(ms);
  return { seconds: BigInt(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1_000_000 };
}
