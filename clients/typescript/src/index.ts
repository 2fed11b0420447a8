// The cachet client: one channel scoped to a namespace, typed calls for every
// service, typed errors (CachetError and its subclasses), TLS and a credential,
// retries of idempotent calls through the gRPC service config.
import type { Client, ClientOptions, ChannelCredentials } from "@grpc/grpc-js";
import { Admin } from "./admin";
import { CacheCalls } from "./cache";
import { Events } from "./events";
import { CacheServiceClient } from "./gen/cachet/cache/v1/cache";
import { Locks } from "./locks";
import { RateLimits } from "./ratelimit";
import { type CachetClientOptions, Transport } from "./transport";

export * from "./errors";
export { Admin } from "./admin";
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
  IDEMPOTENT_METHODS,
  REQUEST_ID_METHODS,
  NAMESPACE_METADATA,
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

  /** Closes the channel (shared by every stub from `stub`). */
  close(): void {
    this.transport.close();
  }
}
