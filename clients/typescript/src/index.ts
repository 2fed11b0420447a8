// The cachet client: one channel scoped to a namespace, typed calls for every
// service, typed errors (CachetError and its subclasses), TLS and a credential,
// retries of idempotent calls through the gRPC service config.
import type { Client, ClientOptions, ChannelCredentials } from "@grpc/grpc-js";
import { Admin } from "./admin";
import { CacheCalls, type Value } from "./cache";
import { Events } from "./events";
import { CacheServiceClient } from "./gen/cachet/cache/v1/cache";
import { toCachetError } from "./errors";
import { Locks } from "./locks";
import { NearCache, type NearCacheOptions, nearCacheServer } from "./nearcache";
import { RateLimits } from "./ratelimit";
import { type CachetClientOptions, type CallOptions, Transport } from "./transport";

export * from "./errors";
export { Admin } from "./admin";
export {
  Batch,
  BatchableCalls,
  Batcher,
  type BatcherOptions,
  type BatchResults,
  type BatchSetOptions,
  type OperationFailure,
  type OperationResult,
  Session,
  type SessionOptions,
} from "./batch";
export {
  type Bytes,
  CacheCalls,
  type CollectionOptions,
  compare,
  CompareOperator,
  type GetOrSetOptions,
  type IncrementOptions,
  type Invalidation,
  ListEnd,
  op,
  Order,
  type ScoredMember,
  type ScoreRange,
  SetOperation,
  type SetOptions,
  SortedSetAddCondition,
  Txn,
  type Value,
} from "./cache";
export { type ConsumeOptions, type Delivery, type Event, type EventInput, Events, type GroupOptions, type TopicMessage } from "./events";
export { HeldLock, type HoldOptions, type Lease, type LockOptions, Locks } from "./locks";
export { Algorithm, type Decision, type Limit, parseLimit, RateLimits, target } from "./ratelimit";
export {
  type CachetClientOptions,
  type CallOptions,
  DEFAULT_MAX_BATCH,
  IDEMPOTENT_METHODS,
  MAX_RECEIVE_MESSAGE_LENGTH,
  REQUEST_ID_METHODS,
  NAMESPACE_METADATA,
  RETRY_POLICY,
  RETRY_SERVICE_CONFIG,
  type TlsOptions,
  type TokenSource,
} from "./transport";
export { status } from "@grpc/grpc-js";
export * from "./nearcache";
// The generated modules of every service, named like the Go packages.
export * as adminv1 from "./gen/cachet/admin/v1/admin";
export * as cachev1 from "./gen/cachet/cache/v1/cache";
export * as eventbusv1 from "./gen/cachet/eventbus/v1/eventbus";
export * as lockv1 from "./gen/cachet/lock/v1/lock";
export * as ratelimitv1 from "./gen/cachet/ratelimit/v1/ratelimit";
export * as envoyratelimitv3 from "./gen/envoy/service/ratelimit/v3/rls";

type ClientConstructor<T extends Client> = new (
  address: string,
  credentials: ChannelCredentials,
  options?: Partial<ClientOptions>,
) => T;

/**
 * One channel to a cachet server, scoped to one namespace. The cache calls are its
 * methods; `locks`, `rateLimits`, `events` and `admin` are the other services.
 */
export class CachetClient extends CacheCalls {
  readonly namespace: string;
  readonly locks: Locks;
  readonly rateLimits: RateLimits;
  readonly events: Events;
  readonly admin: Admin;
  /** The generated CacheService stub on this channel. */
  readonly cache: CacheServiceClient;
  private near?: NearCache;

  constructor(target: string, options: CachetClientOptions = {}) {
    super(new Transport(target, options));
    this.namespace = this.transport.namespace;
    this.locks = new Locks(this.transport);
    this.rateLimits = new RateLimits(this.transport);
    this.events = new Events(this.transport);
    this.admin = new Admin(this.transport);
    this.cache = this.stub(CacheServiceClient);
  }

  /**
   * A generated stub (e.g. `lockv1.LockServiceClient`) on this client's channel,
   * sending the namespace and the credential, with the retry policy.
   */
  stub<T extends Client>(constructor: ClientConstructor<T>): T {
    return new constructor(this.transport.target, this.transport.credentials, {
      channelOverride: this.transport.client.getChannel(),
      interceptors: this.transport.interceptors,
    });
  }

  /**
   * Serves `get` and `getMany` from a local near-cache kept in step by the server's
   * WatchInvalidations stream (docs/near-cache.md): never staler than the stream's
   * delay, never served while the stream is not synced. Call it once; the near-cache's
   * `stats()` count hits and misses, and `close()` stops it.
   */
  enableNearCache(options: NearCacheOptions = {}): NearCache {
    if (this.near !== undefined) {
      throw new Error("the near-cache is already enabled");
    }
    this.near = new NearCache(nearCacheServer(this.cache, { timeoutMs: this.transport.timeoutMs }), options).start();
    return this.near;
  }

  /** The near-cache `enableNearCache` made, if any. */
  get nearCache(): NearCache | undefined {
    return this.near;
  }

  override async get(key: string, options?: CallOptions): Promise<Value | undefined> {
    if (this.near === undefined) {
      return super.get(key, options);
    }
    try {
      return await this.near.get(key);
    } catch (error) {
      throw toCachetError(error);
    }
  }

  override async getMany(keys: string[], options?: CallOptions): Promise<(Value | undefined)[]> {
    if (this.near === undefined) {
      return super.getMany(keys, options);
    }
    try {
      return await this.near.getMany(keys);
    } catch (error) {
      throw toCachetError(error);
    }
  }

  /** Closes the channel (shared by every stub from `stub`), and the near-cache. */
  close(): void {
    void this.near?.close();
    this.near = undefined;
    this.transport.close();
  }
}
