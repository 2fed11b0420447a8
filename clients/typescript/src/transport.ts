// One channel to a cachet server and the helpers every service wrapper calls through:
// the namespace and the credential on every call, a deadline and an AbortSignal per
// call, rejections as CachetError, and the retry policy in the service config.
import {
  type CallOptions as GrpcCallOptions,
  type ChannelCredentials,
  Client,
  type ClientDuplexStream,
  type ClientOptions,
  type ClientReadableStream,
  credentials as grpcCredentials,
  InterceptingCall,
  type Interceptor,
  Metadata,
  status,
} from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { type CachetError, CancelledError, toCachetError } from "./errors";
import type { Duration } from "./gen/google/protobuf/duration";

export const NAMESPACE_METADATA = "cachet-namespace";

/** Answers the credential to send; called once per call, so it can refresh a token. */
export type TokenSource = () => string | Promise<string>;

export interface TlsOptions {
  /** PEM CA bundle to trust. Default: the system roots. */
  ca?: Buffer | string;
  /** PEM client certificate, for mutual TLS (with `key`). */
  cert?: Buffer | string;
  /** PEM private key of `cert`. */
  key?: Buffer | string;
}

export interface CachetClientOptions {
  /** The namespace every call runs in. Default `default`. */
  namespace?: string;
  /** TLS: `true` for the system roots, or a CA and a client certificate. Default: plaintext. */
  tls?: TlsOptions | true;
  /** Channel credentials, instead of `tls` (e.g. from `credentials.createSsl`). */
  credentials?: ChannelCredentials;
  /** Sent as `authorization: Bearer <token>` on every call: a token or a function that answers one. */
  token?: string | TokenSource;
  /** Allow `token` over plaintext: only for a server reached over loopback or a sidecar. */
  allowPlaintextToken?: boolean;
  /** Deadline of each unary call in milliseconds. Default 5000. Streams have none. */
  timeoutMs?: number;
  /**
   * The most operations one Batch call carries: the server's max_batch (default 1000).
   * A Batch or Batcher with more sends several calls.
   */
  maxBatch?: number;
  /** Retry idempotent calls on UNAVAILABLE (see IDEMPOTENT_METHODS). Default true. */
  retry?: boolean;
  /** More grpc-js channel options (`"grpc.max_receive_message_length"` caps answers: MAX_RECEIVE_MESSAGE_LENGTH). */
  channelOptions?: Partial<ClientOptions>;
}

/** Per-call options of every wrapper method. */
export interface CallOptions {
  /** Aborting it cancels the call (it rejects with CancelledError). */
  signal?: AbortSignal;
  /** This call's deadline in milliseconds, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
}

/**
 * The RPCs that may run twice with the effect of once: reads, and writes that set an
 * absolute state. These and REQUEST_ID_METHODS are retried: a retried Set, Acquire or
 * Check could apply twice, and a retried Release after a lost answer would fail.
 */
export const IDEMPOTENT_METHODS: Record<string, readonly string[]> = {
  "cachet.cache.v1.CacheService": [
    "Get", "GetMany", "Delete", "Exists", "Expire", "GetTtl", "GetBit", "BitCount",
    "HashGet", "HashGetAll", "HashDelete", "HashKeys", "HashValues", "HashLength", "HashScan",
    "ListRange", "ListLength",
    "SetRemove", "SetMembers", "SetIsMember", "SetCardinality", "SetRandomMembers",
    "SortedSetRank", "SortedSetRange", "SortedSetCount", "SortedSetScore", "SortedSetRemove",
    "SortedSetCardinality",
    "InvalidateTags", "InvalidatePattern",
  ],
  "cachet.lock.v1.LockService": ["Inspect", "InspectSemaphore"],
  "cachet.ratelimit.v1.RateLimitService": ["Reset", "ListPolicies"],
  "cachet.eventbus.v1.EventBusService": ["Read", "Range", "Ack", "Pending", "ListPending", "Info"],
  "cachet.admin.v1.AdminService": [
    "GetServerInfo", "GetServiceStats", "GetSlowLog", "GetMemoryStats", "GetKeyMemoryUsage",
    "ScanKeys", "InspectKey", "GetBigKeys", "ListClients", "GetConfig",
  ],
};

/**
 * Writes that would apply twice if retried, made safe to retry by the request_id the
 * wrappers set: a fresh random id per call, which its retries (the same request)
 * repeat, so the server applies the call once (docs/cache.md, "Retries that apply
 * once"). A raw stub's call without request_id is retried too, and may apply twice.
 */
export const REQUEST_ID_METHODS: Record<string, readonly string[]> = {
  "cachet.cache.v1.CacheService": ["Increment", "HashIncrement", "ListPush", "SortedSetIncrement"],
  "cachet.eventbus.v1.EventBusService": ["Publish", "Append"],
};

/**
 * The largest answer the channel accepts: unlimited (-1), not gRPC's 4 MiB default. The
 * server bounds what it sends (limits.max_message_bytes, 8 MiB unless an operator raises
 * it) and sizes GetMany, Batch and collection answers to fit, so a lower cap here would
 * fail answers the server built for a caller who asked for them. `channelOptions`
 * `"grpc.max_receive_message_length"` caps it again.
 */
export const MAX_RECEIVE_MESSAGE_LENGTH = -1;

/** The server's default max_batch: the most operations of one Batch call. */
export const DEFAULT_MAX_BATCH = 1000;

/** A fresh request_id for one logical call. */
export const requestId = (): string => randomUUID();

/** The retry policy of RETRY_SERVICE_CONFIG, which Batch calls follow too (batch.ts). */
export const RETRY_POLICY = { maxAttempts: 4, initialBackoffMs: 50, maxBackoffMs: 1000, backoffMultiplier: 2 };

/** The gRPC service config the client installs: IDEMPOTENT_METHODS and REQUEST_ID_METHODS retried on UNAVAILABLE. */
export const RETRY_SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: [IDEMPOTENT_METHODS, REQUEST_ID_METHODS].flatMap((table) =>
        Object.entries(table).flatMap(([service, methods]) => methods.map((method) => ({ service, method }))),
      ),
      retryPolicy: {
        maxAttempts: RETRY_POLICY.maxAttempts,
        initialBackoff: `${RETRY_POLICY.initialBackoffMs / 1000}s`,
        maxBackoff: `${RETRY_POLICY.maxBackoffMs / 1000}s`,
        backoffMultiplier: RETRY_POLICY.backoffMultiplier,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
});

/** Whether the retry policy covers an RPC: IDEMPOTENT_METHODS or REQUEST_ID_METHODS. */
export function mayRetry(service: string, method: string): boolean {
  return (IDEMPOTENT_METHODS[service]?.includes(method) ?? false) || (REQUEST_ID_METHODS[service]?.includes(method) ?? false);
}

/** The wait before retry `n` (1, 2, ...), randomized as grpc-js randomizes it: uniform below the capped exponential backoff. */
export function retryBackoffMs(n: number): number {
  const ceiling = Math.min(RETRY_POLICY.initialBackoffMs * RETRY_POLICY.backoffMultiplier ** (n - 1), RETRY_POLICY.maxBackoffMs);
  return Math.random() * ceiling;
}

/** A generated method definition (`CacheServiceService.get`, ...). */
export interface MethodDefinition<Request, Response> {
  path: string;
  requestSerialize: (value: Request) => Buffer;
  responseDeserialize: (value: Buffer) => Response;
}

export class Transport {
  readonly namespace: string;
  readonly target: string;
  readonly credentials: ChannelCredentials;
  readonly interceptors: Interceptor[];
  readonly client: Client;
  readonly timeoutMs: number;
  readonly maxBatch: number;
  /** Whether calls the retry policy covers are retried (`retry`). */
  readonly retry: boolean;

  constructor(target: string, options: CachetClientOptions) {
    this.target = target;
    this.namespace = options.namespace ?? "default";
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    this.retry = options.retry !== false;
    if (!Number.isInteger(this.maxBatch) || this.maxBatch < 1) {
      throw new Error(`cachet: maxBatch must be a positive integer, not ${this.maxBatch}`);
    }
    this.credentials = channelCredentials(options);
    this.interceptors = [namespaceInterceptor(this.namespace)];
    if (options.token !== undefined) {
      if (!options.tls && !options.credentials && !options.allowPlaintextToken) {
        throw new Error("cachet: a token needs TLS (set `tls`), or `allowPlaintextToken` for loopback");
      }
      const source = options.token;
      this.interceptors.push(bearerInterceptor(typeof source === "string" ? () => source : source));
    }
    this.interceptors.push(...(options.channelOptions?.interceptors ?? []));
    const channelOptions: Partial<ClientOptions> = {
      "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_LENGTH,
      ...options.channelOptions,
      interceptors: this.interceptors,
    };
    // A service config of the caller's own is theirs to keep: ours would replace it whole.
    if (this.retry && options.channelOptions?.["grpc.service_config"] === undefined) {
      channelOptions["grpc.service_config"] = RETRY_SERVICE_CONFIG;
    }
    this.client = new Client(target, this.credentials, channelOptions);
  }

  close(): void {
    this.client.close();
  }

  unary<Request, Response>(
    method: MethodDefinition<Request, Response>,
    request: Request,
    options: CallOptions = {},
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      const { signal } = options;
      if (signal?.aborted) {
        reject(aborted(signal));
        return;
      }
      const onAbort = () => call.cancel();
      const call = this.client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        request,
        new Metadata(),
        { deadline: Date.now() + (options.timeoutMs ?? this.timeoutMs) },
        (error, response) => {
          signal?.removeEventListener("abort", onAbort);
          if (error) reject(toCachetError(error, signal?.aborted ? signal.reason : undefined));
          else resolve(response as Response);
        },
      );
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** A server stream, without deadline unless `timeoutMs` is given; `signal` cancels it. */
  serverStream<Request, Response>(
    method: MethodDefinition<Request, Response>,
    request: Request,
    options: CallOptions = {},
  ): ClientReadableStream<Response> {
    const stream = this.client.makeServerStreamRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      request,
      new Metadata(),
      streamOptions(options),
    );
    cancelOnAbort(stream, options.signal);
    return stream;
  }

  /** A bidirectional stream, without deadline unless `timeoutMs` is given. */
  duplex<Request, Response>(
    method: MethodDefinition<Request, Response> & { requestDeserialize?: unknown },
    options: CallOptions = {},
  ): ClientDuplexStream<Request, Response> {
    const stream = this.client.makeBidiStreamRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      new Metadata(),
      streamOptions(options),
    );
    cancelOnAbort(stream, options.signal);
    return stream;
  }
}

/**
 * The messages of a server stream as an async iterator: errors are thrown as
 * CachetError, and leaving the loop (break, return, throw) cancels the call.
 */
export async function* iterate<Response>(stream: ClientReadableStream<Response>, signal?: AbortSignal): AsyncGenerator<Response> {
  try {
    for await (const message of stream) {
      yield message as Response;
    }
  } catch (error) {
    throw toCachetError(error, signal?.aborted ? signal.reason : undefined);
  } finally {
    stream.cancel();
  }
}

function streamOptions(options: CallOptions): Partial<GrpcCallOptions> {
  return options.timeoutMs === undefined ? {} : { deadline: Date.now() + options.timeoutMs };
}

function cancelOnAbort(stream: { cancel(): void }, signal: AbortSignal | undefined): void {
  if (!signal) return;
  if (signal.aborted) {
    stream.cancel();
    return;
  }
  const onAbort = () => stream.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  (stream as unknown as NodeJS.EventEmitter).once("close", () => signal.removeEventListener("abort", onAbort));
}

function aborted(signal: AbortSignal): CachetError {
  return new CancelledError(status.CANCELLED, "aborted before the call started", new Metadata(), undefined, signal.reason);
}

function channelCredentials(options: CachetClientOptions): ChannelCredentials {
  if (options.credentials) return options.credentials;
  if (!options.tls) return grpcCredentials.createInsecure();
  const tls = options.tls === true ? {} : options.tls;
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new Error("cachet: a TLS client certificate needs both `cert` and `key`");
  }
  const pem = (value: Buffer | string | undefined) => (value === undefined ? null : Buffer.from(value));
  return grpcCredentials.createSsl(pem(tls.ca), pem(tls.key), pem(tls.cert));
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

/**
 * Adds `authorization: Bearer <token>` to each call, unary and streaming. The token
 * source may be async: grpc-js holds the call's messages until `next` runs. A failing
 * source fails the call with UNAUTHENTICATED, without sending it.
 */
function bearerInterceptor(source: TokenSource): Interceptor {
  return (options, nextCall) => {
    const call = nextCall(options);
    return new InterceptingCall(call, {
      start(metadata, listener, next) {
        Promise.resolve()
          .then(source)
          .then(
            (token) => {
              metadata.set("authorization", `Bearer ${token}`);
              next(metadata, listener);
            },
            (error: unknown) => {
              call.cancelWithStatus(status.UNAUTHENTICATED, `cachet credential: ${error instanceof Error ? error.message : String(error)}`);
              next(metadata, listener);
            },
          );
      },
    });
  };
}

/** Milliseconds as a protobuf Duration (undefined stays undefined: the server's default). */
export function duration(ms: number | undefined): Duration | undefined {
  if (ms === undefined) {
    return undefined;
  }
  const whole = Math.ceil(ms);
  return { seconds: BigInt(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1_000_000 };
}

/** A protobuf Duration in milliseconds (absent: 0). */
export function millis(value: Duration | undefined): number {
  return value === undefined ? 0 : Number(value.seconds) * 1000 + value.nanos / 1e6;
}
