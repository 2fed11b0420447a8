// LockService: locks, held locks (Hold) and semaphores. A lock alone never protects a
// resource: pass the fencing token to every write made under it (`fencingToken` for
// cachet's own writes).
import type { ClientDuplexStream } from "@grpc/grpc-js";
import { CachetError, LeaseLostError, toCachetError } from "./errors";
import {
  type HoldRequest,
  type HoldResponse,
  type InspectResponse,
  type InspectSemaphoreResponse,
  LockServiceService as Lock,
  type ReplicationRequirement,
} from "./gen/cachet/lock/v1/lock";
import { type CallOptions, duration, type Transport } from "./transport";

export interface LockOptions extends CallOptions {
  /** How long to wait while the lock is held (or the semaphore full). Default: try once. */
  waitMs?: number;
  /** Describes the holder for inspect ("host-3/pid-4411"). */
  holder?: string;
  /** Wait until that many replicas acknowledged the grant. */
  minReplicas?: number;
}

export interface HoldOptions extends LockOptions {
  /** How often the server renews. Default: the server's. */
  renewIntervalMs?: number;
}

/** A granted lock or semaphore permit. */
export interface Lease {
  name: string;
  /** Proves ownership to release and extend; keep it secret. */
  ownerToken: string;
  /** Larger than every earlier grant's for the name. */
  fencingToken: bigint;
  /** Redis time the grant expires unless extended. */
  expireTime: Date;
}

function replication(options: LockOptions): ReplicationRequirement | undefined {
  return options.minReplicas ? { minReplicas: BigInt(options.minReplicas), timeout: undefined } : undefined;
}

export class Locks {
  constructor(private readonly transport: Transport) {}

  /** Grants lock `name` for `ttlMs`, waiting up to `waitMs` while it is held (LockHeldError after). */
  async acquire(name: string, ttlMs: number, options: LockOptions = {}): Promise<Lease> {
    const request = {
      name,
      ttl: duration(ttlMs),
      wait: duration(options.waitMs),
      holder: options.holder ?? "",
      replication: replication(options),
    };
    const reply = await this.transport.unary(Lock.acquire, request, options);
    return { name, ownerToken: reply.ownerToken, fencingToken: reply.fencingToken, expireTime: reply.expireTime ?? new Date(0) };
  }

  /** Frees the lock if `lease` still owns it (LockNotOwnedError otherwise). */
  async release(lease: Lease, options?: CallOptions): Promise<void> {
    await this.transport.unary(Lock.release, { name: lease.name, ownerToken: lease.ownerToken, replication: undefined }, options);
  }

  /** Sets the lock's remaining TTL to `ttlMs` if `lease` still owns it, and updates `lease.expireTime`. */
  async extend(lease: Lease, ttlMs: number, options?: CallOptions): Promise<void> {
    const request = { name: lease.name, ownerToken: lease.ownerToken, ttl: duration(ttlMs), replication: undefined };
    const reply = await this.transport.unary(Lock.extend, request, options);
    lease.expireTime = reply.expireTime ?? lease.expireTime;
  }

  /** A lock's state (never its owner token). */
  inspect(name: string, options?: CallOptions): Promise<InspectResponse> {
    return this.transport.unary(Lock.inspect, { name }, options);
  }

  /** Takes one of `limit` permits for `ttlMs`, waiting up to `waitMs` while all are taken (SemaphoreFullError after). */
  async acquireSemaphore(name: string, limit: number, ttlMs: number, options: LockOptions = {}): Promise<Lease> {
    const request = {
      name,
      limit: BigInt(limit),
      ttl: duration(ttlMs),
      wait: duration(options.waitMs),
      holder: options.holder ?? "",
      replication: replication(options),
    };
    const reply = await this.transport.unary(Lock.acquireSemaphore, request, options);
    return { name, ownerToken: reply.ownerToken, fencingToken: reply.fencingToken, expireTime: reply.expireTime ?? new Date(0) };
  }

  /** Returns the permit (LockNotOwnedError when `lease` holds none). */
  async releaseSemaphore(lease: Lease, options?: CallOptions): Promise<void> {
    await this.transport.unary(Lock.releaseSemaphore, { name: lease.name, ownerToken: lease.ownerToken }, options);
  }

  /** Sets the permit's remaining TTL and updates `lease.expireTime`. */
  async extendSemaphore(lease: Lease, ttlMs: number, options?: CallOptions): Promise<void> {
    const request = { name: lease.name, ownerToken: lease.ownerToken, ttl: duration(ttlMs), replication: undefined };
    const reply = await this.transport.unary(Lock.extendSemaphore, request, options);
    lease.expireTime = reply.expireTime ?? lease.expireTime;
  }

  /** A semaphore's permits (never their owner tokens). */
  inspectSemaphore(name: string, options?: CallOptions): Promise<InspectSemaphoreResponse> {
    return this.transport.unary(Lock.inspectSemaphore, { name }, options);
  }

  /**
   * Acquires lock `name` (waiting up to `waitMs`, LockHeldError after) and keeps it
   * while the returned HeldLock is open: the server renews it until `release()`, until
   * `signal` aborts, or until it cannot renew; then `held.signal` aborts. Stop acting
   * as the holder as soon as it does (pass it to the work done under the lock).
   */
  hold(name: string, ttlMs: number, options: HoldOptions = {}): Promise<HeldLock> {
    const stream = this.transport.duplex(Lock.hold, { signal: options.signal });
    return HeldLock.start(stream, {
      acquire: {
        name,
        ttl: duration(ttlMs),
        wait: duration(options.waitMs),
        holder: options.holder ?? "",
        renewInterval: duration(options.renewIntervalMs),
        replication: replication(options),
      },
      release: undefined,
    });
  }
}

/** A lock kept by a Hold stream. */
export class HeldLock {
  /** The grant's fencing token: pass it to every resource you write. */
  readonly fencingToken: bigint;
  private expire: Date;
  private readonly lost = new AbortController();
  private releasing = false;
  private readonly ended: Promise<void>;

  private constructor(
    private readonly stream: ClientDuplexStream<HoldRequest, HoldResponse>,
    acquired: NonNullable<HoldResponse["acquired"]>,
  ) {
    this.fencingToken = acquired.fencingToken;
    this.expire = acquired.expireTime ?? new Date(0);
    this.ended = new Promise((resolve) => {
      stream.on("data", (event: HoldResponse) => {
        if (event.renewed?.expireTime) this.expire = event.renewed.expireTime;
        if (event.lost) this.markLost(new LeaseLostError(10, event.lost.message));
      });
      stream.on("error", (error: unknown) => {
        if (!this.releasing) this.markLost(toCachetError(error));
        resolve();
      });
      stream.on("end", () => {
        if (!this.releasing) this.markLost(new CachetError(14, "the hold stream ended"));
        resolve();
      });
    });
  }

  static start(stream: ClientDuplexStream<HoldRequest, HoldResponse>, acquire: HoldRequest): Promise<HeldLock> {
    return new Promise((resolve, reject) => {
      const onData = (event: HoldResponse) => {
        cleanup();
        if (event.acquired) resolve(new HeldLock(stream, event.acquired));
        else {
          stream.cancel();
          reject(new CachetError(13, "Hold answered something before acquired"));
        }
      };
      const onError = (error: unknown) => {
        cleanup();
        reject(toCachetError(error));
      };
      const cleanup = () => {
        stream.off("data", onData);
        stream.off("error", onError);
      };
      stream.on("data", onData);
      stream.on("error", onError);
      stream.write(acquire);
    });
  }

  private markLost(reason: unknown): void {
    if (!this.lost.signal.aborted) this.lost.abort(reason);
  }

  /** Aborts when the lock is lost (not renewable, the call's signal aborted, the stream broke); `reason` says why. Not on release. */
  get signal(): AbortSignal {
    return this.lost.signal;
  }

  /** When the lock expires unless renewed again (Redis time). */
  get expireTime(): Date {
    return this.expire;
  }

  /** Gives the lock back and waits for the server's confirmation; rejects with the loss if it was lost before. Idempotent. */
  async release(): Promise<void> {
    if (!this.releasing) {
      this.releasing = true;
      if (!this.lost.signal.aborted) {
        this.stream.write({ acquire: undefined, release: {} });
        this.stream.end();
      }
    }
    await this.ended;
    if (this.lost.signal.aborted) throw this.lost.signal.reason;
  }
}
