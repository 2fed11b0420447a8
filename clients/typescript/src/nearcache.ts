// A client-side near-cache kept correct by the server's WatchInvalidations stream
// (docs/near-cache.md). It serves a read only while its stream is synced. Every
// invalidation advances a sequence number; a read takes a ticket (the sequence and the
// time) when it starts, and its answer is stored only if no invalidation of that key,
// and no flush, came after: a late answer never brings back a value that a newer write
// invalidated.
import { type CallOptions, Metadata } from "@grpc/grpc-js";
import type {
  CacheServiceClient,
  GetManyRequest,
  GetManyResponse,
  GetRequest,
  GetResponse,
  WatchInvalidationsRequest,
  WatchInvalidationsResponse,
} from "./gen/cachet/cache/v1/cache";
import type { Duration } from "./gen/google/protobuf/duration";

/** A near-cached value (the same shape as the client's `Value`). */
export interface NearValue {
  data: Buffer;
  version: bigint;
}

/** The three calls a near-cache makes; `nearCacheServer` adapts a generated stub. */
export interface NearCacheServer {
  get(request: GetRequest): Promise<GetResponse>;
  getMany(request: GetManyRequest): Promise<GetManyResponse>;
  /** Opens the stream; aborting `signal` cancels it. */
  watch(request: WatchInvalidationsRequest, signal: AbortSignal): AsyncIterable<WatchInvalidationsResponse>;
}

export interface NearCacheOptions {
  /** Caps the number of entries. Default 10,000. */
  maxEntries?: number;
  /** Caps the sum of the values' sizes. Default 64 MiB. */
  maxBytes?: number;
  /** Caps how long an entry is kept, even when the server's TTL is longer or absent. Default 300,000 ms. */
  maxTtlMs?: number;
  /** Narrows the stream (and so what is cached) to keys with these prefixes. Default: every key. */
  prefixes?: string[];
  /** Caps the wait between attempts to reopen a broken stream. Default 5,000 ms. */
  maxBackoffMs?: number;
  /** Milliseconds on a monotonic clock; replaces `performance.now` (tests). */
  clock?: () => number;
}

/** Counters since the near-cache was made, and its current size. */
export interface NearCacheStats {
  hits: number;
  misses: number;
  invalidations: number;
  flushes: number;
  evictions: number;
  entries: number;
  bytes: number;
  synced: boolean;
}

/** What `begin` answers: pass it to `fill` or `abandon`. */
export interface NearTicket {
  readonly sequence: number;
  readonly startedMs: number;
}

interface Entry {
  value: NearValue;
  expiresAtMs: number;
}

const FIRST_BACKOFF_MS = 50;

/**
 * A bounded LRU (by entries and by value bytes) of values read from the server,
 * invalidated by an async loop that follows WatchInvalidations (`start` / `close`, or
 * `follow` with an AbortSignal). Without a server it is only the core: drive it with
 * `apply` (tests, custom transports).
 */
export class NearCache {
  readonly maxEntries: number;
  readonly maxBytes: number;
  readonly maxTtlMs: number;
  private readonly server: NearCacheServer | undefined;
  private readonly request: WatchInvalidationsRequest;
  private readonly maxBackoffMs: number;
  private readonly clock: () => number;
  /** In least recently used first order (a Map keeps insertion order). */
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  private isSynced = false;
  private syncedWaiters: (() => void)[] = [];
  // `sequence` counts invalidations and flushes; `flushedAt` is the sequence of the last
  // flush; `invalidatedAt` the sequence of each key's last invalidation, kept only while
  // reads are in flight (so it stays bounded).
  private sequence = 0;
  private flushedAt = 0;
  private readonly invalidatedAt = new Map<string, number>();
  private readsInFlight = 0;
  private readonly counters = { hits: 0, misses: 0, invalidations: 0, flushes: 0, evictions: 0 };
  private stopper: AbortController | undefined;
  private following: Promise<void> | undefined;

  constructor(server?: NearCacheServer, options: NearCacheOptions = {}) {
    this.maxEntries = positive(options.maxEntries, 10_000, "maxEntries");
    this.maxBytes = positive(options.maxBytes, 64 * 1024 * 1024, "maxBytes");
    this.maxTtlMs = positive(options.maxTtlMs, 300_000, "maxTtlMs");
    this.maxBackoffMs = positive(options.maxBackoffMs, 5_000, "maxBackoffMs");
    this.server = server;
    this.request = { prefixes: options.prefixes ?? [] };
    this.clock = options.clock ?? (() => performance.now());
  }

  /** Starts following the stream in the background until `close`. */
  start(): this {
    if (!this.following) {
      this.stopper = new AbortController();
      this.following = this.follow(this.stopper.signal);
    }
    return this;
  }

  /** Stops following and waits for the loop to end; the cache then serves nothing. */
  async close(): Promise<void> {
    this.stopper?.abort();
    await this.following;
    this.flushAll();
  }

  /**
   * Keeps the cache in step with the server until `signal` aborts: reads the stream,
   * and when it breaks, flushes the cache (which then serves nothing) and opens it
   * again after a jittered, doubling backoff.
   */
  async follow(signal: AbortSignal): Promise<void> {
    const server = this.requireServer();
    let backoffMs = FIRST_BACKOFF_MS;
    while (!signal.aborted) {
      try {
        for await (const event of server.watch(this.request, signal)) {
          this.apply(event);
          backoffMs = FIRST_BACKOFF_MS;
        }
      } catch {
        // A broken stream is a gap like any other: flushed below, then reopened.
      }
      this.flushAll();
      await sleep(backoffMs * (0.5 + Math.random()), signal);
      backoffMs = Math.min(backoffMs * 2, this.maxBackoffMs);
    }
  }

  /** Applies one event of the WatchInvalidations stream. */
  apply(event: WatchInvalidationsResponse): void {
    if (event.synced !== undefined) {
      this.markSynced();
    } else if (event.keys !== undefined) {
      this.invalidate(event.keys.keys);
    } else if (event.flushAll !== undefined) {
      this.flushAll();
    }
  }

  /** Whether the stream is synced (the cache serves reads). */
  get synced(): boolean {
    return this.isSynced;
  }

  /** Resolves once the stream is synced; rejects if `signal` aborts first. */
  waitSynced(signal?: AbortSignal): Promise<void> {
    if (this.isSynced) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal?.reason ?? new Error("aborted"));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.syncedWaiters.push(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      });
    });
  }

  /** The near-cached value of key if it is there, fresh, and the stream is synced (a copy). */
  lookup(key: string): NearValue | undefined {
    let entry = this.isSynced ? this.entries.get(key) : undefined;
    if (entry !== undefined && entry.expiresAtMs <= this.clock()) {
      this.drop(key);
      entry = undefined;
    }
    if (entry === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.entries.delete(key); // re-inserted: now the most recently used
    this.entries.set(key, entry);
    this.counters.hits++;
    return { data: Buffer.from(entry.value.data), version: entry.value.version };
  }

  /** Call before sending a read whose answer may be filled in; every `begin` is followed by one `fill` or `abandon`. */
  begin(count = 1): NearTicket {
    this.readsInFlight += count;
    return { sequence: this.sequence, startedMs: this.clock() };
  }

  /**
   * Stores what a read begun at `ticket` answered; `ttlMs` is the server's remaining
   * TTL (undefined: none). The entry expires at most `ttlMs` after the read began, so
   * never after the server's copy. False, storing nothing, when the answer must not be
   * cached: the stream is not synced, the key was invalidated (or everything flushed)
   * since the read began, or the value is larger than the cache. A stored entry keeps
   * `value.data` itself: the caller must not change it afterwards.
   */
  fill(ticket: NearTicket, key: string, value: NearValue, ttlMs: number | undefined): boolean {
    try {
      const invalidatedAt = this.invalidatedAt.get(key);
      if (
        !this.isSynced ||
        ticket.sequence < this.flushedAt ||
        (invalidatedAt !== undefined && invalidatedAt > ticket.sequence) ||
        value.data.length > this.maxBytes ||
        (ttlMs !== undefined && ttlMs <= 0)
      ) {
        return false;
      }
      const lifetimeMs = ttlMs === undefined ? this.maxTtlMs : Math.min(ttlMs, this.maxTtlMs);
      this.drop(key);
      this.entries.set(key, { value: { data: value.data, version: value.version }, expiresAtMs: ticket.startedMs + lifetimeMs });
      this.bytes += value.data.length;
      this.evict();
      return true;
    } finally {
      this.endReads(1);
    }
  }

  /** Ends a read begun at `ticket` that has no answer to store (`count` reads begun together). */
  abandon(_ticket: NearTicket, count = 1): void {
    this.endReads(count);
  }

  /** Drops keys (they changed on the server). */
  invalidate(keys: Iterable<string>): void {
    this.sequence++;
    for (const key of keys) {
      this.counters.invalidations++;
      this.drop(key);
      if (this.readsInFlight > 0) {
        this.invalidatedAt.set(key, this.sequence);
      }
    }
  }

  /** Drops everything and serves nothing until the next `synced` (a gap). */
  flushAll(): void {
    this.isSynced = false;
    this.sequence++;
    this.flushedAt = this.sequence;
    this.entries.clear();
    this.invalidatedAt.clear();
    this.bytes = 0;
    this.counters.flushes++;
  }

  /** Starts serving (the stream sent `synced`). */
  markSynced(): void {
    this.isSynced = true;
    const waiters = this.syncedWaiters;
    this.syncedWaiters = [];
    waiters.forEach((wake) => wake());
  }

  stats(): NearCacheStats {
    return { ...this.counters, entries: this.entries.size, bytes: this.bytes, synced: this.isSynced };
  }

  /** Reads key from the near-cache, or else from the server (with its TTL), filling the near-cache; undefined when absent. */
  async get(key: string): Promise<NearValue | undefined> {
    const cached = this.lookup(key);
    if (cached !== undefined) {
      return cached;
    }
    const server = this.requireServer();
    const ticket = this.begin();
    let reply: GetResponse;
    try {
      reply = await server.get({ key, includeTtl: true, earlyRefreshBeta: 0 });
    } catch (error) {
      this.abandon(ticket);
      throw error;
    }
    if (!reply.found) {
      this.abandon(ticket);
      return undefined;
    }
    this.fill(ticket, key, { data: reply.value, version: reply.version }, milliseconds(reply.ttl));
    return { data: Buffer.from(reply.value), version: reply.version };
  }

  /**
   * Reads keys, each from the near-cache or else (all the missing ones in one GetMany
   * with their TTLs) from the server, filling the near-cache; one entry per key, in
   * order, undefined for an absent key.
   */
  async getMany(keys: string[]): Promise<(NearValue | undefined)[]> {
    const values: (NearValue | undefined)[] = new Array(keys.length).fill(undefined);
    const wanted = new Map<string, number[]>(); // positions of each missing key (keys may repeat)
    keys.forEach((key, position) => {
      const positions = wanted.get(key);
      if (positions !== undefined) {
        positions.push(position);
        return;
      }
      const cached = this.lookup(key);
      if (cached !== undefined) {
        values[position] = cached;
      } else {
        wanted.set(key, [position]);
      }
    });
    if (wanted.size === 0) {
      return values;
    }
    const server = this.requireServer();
    const missing = [...wanted.keys()];
    const ticket = this.begin(missing.length);
    let reply: GetManyResponse;
    try {
      reply = await server.getMany({ keys: missing, includeTtl: true });
    } catch (error) {
      this.abandon(ticket, missing.length);
      throw error;
    }
    missing.forEach((key, i) => {
      const entry = reply.entries[i];
      if (entry === undefined || !entry.found) {
        this.abandon(ticket);
        return;
      }
      this.fill(ticket, key, { data: entry.value, version: entry.version }, milliseconds(entry.ttl));
      for (const position of wanted.get(key) ?? []) {
        values[position] = { data: Buffer.from(entry.value), version: entry.version };
      }
    });
    return values;
  }

  private requireServer(): NearCacheServer {
    if (this.server === undefined) {
      throw new Error("this near-cache has no server: make it with one to read or follow");
    }
    return this.server;
  }

  private drop(key: string): void {
    const entry = this.entries.get(key);
    if (entry !== undefined) {
      this.bytes -= entry.value.data.length;
      this.entries.delete(key);
    }
  }

  private evict(): void {
    while (this.entries.size > this.maxEntries || this.bytes > this.maxBytes) {
      const oldest = this.entries.keys().next().value as string;
      this.drop(oldest);
      this.counters.evictions++;
    }
  }

  private endReads(count: number): void {
    this.readsInFlight -= count;
    if (this.readsInFlight === 0) {
      // No read can still be affected by these; forget them so memory stays bounded.
      this.invalidatedAt.clear();
    }
  }
}

export interface NearCacheServerOptions {
  /** Sent with every call (the client's `cachet-namespace`, credentials). */
  metadata?: Metadata;
  /** Deadline of each get and getMany in milliseconds. Default 5000. */
  timeoutMs?: number;
}

/** Adapts a generated CacheService stub to what a near-cache needs. */
export function nearCacheServer(stub: CacheServiceClient, options: NearCacheServerOptions = {}): NearCacheServer {
  const metadata = options.metadata ?? new Metadata();
  const timeoutMs = options.timeoutMs ?? 5000;
  const callOptions = (): Partial<CallOptions> => ({ deadline: new Date(Date.now() + timeoutMs) });
  return {
    get: (request) =>
      new Promise((resolve, reject) =>
        stub.get(request, metadata.clone(), callOptions(), (error, reply) => (error ? reject(error) : resolve(reply))),
      ),
    getMany: (request) =>
      new Promise((resolve, reject) =>
        stub.getMany(request, metadata.clone(), callOptions(), (error, reply) => (error ? reject(error) : resolve(reply))),
      ),
    watch(request, signal) {
      const call = stub.watchInvalidations(request, metadata.clone());
      const cancel = () => call.cancel();
      if (signal.aborted) {
        cancel();
      }
      signal.addEventListener("abort", cancel, { once: true });
      call.once("close", () => signal.removeEventListener("abort", cancel));
      return call;
    },
  };
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) {
    return fallback;
  }
  if (!(value > 0)) {
    throw new RangeError(`${name} must be positive`);
  }
  return value;
}

function milliseconds(ttl: Duration | undefined): number | undefined {
  return ttl === undefined ? undefined : Number(ttl.seconds) * 1000 + ttl.nanos / 1e6;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
