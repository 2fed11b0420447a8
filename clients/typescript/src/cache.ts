// CacheService: values, counters, collections, invalidation, the lease protocol and Txn.
import {
  CacheServiceService as Cache,
  CompareOperator,
  type Compare,
  FillRequest,
  GetOrLeaseRequest,
  LeaseOutcome,
  ListEnd,
  Order,
  type ScoreRange as ProtoScoreRange,
  SetOperation,
  SortedSetAddCondition,
  type TxnOp,
  type TxnOpResult,
  TxnRequest,
} from "./gen/cachet/cache/v1/cache";
import { type CallOptions, duration, iterate, millis, requestId, type Transport } from "./transport";
import { status } from "@grpc/grpc-js";
import { CachetError, CancelledError, LeaseLostError } from "./errors";
import { Batch, Batcher, type BatcherOptions, Session, type SessionOptions } from "./batch";
import {
  bytes,
  collectionTtl,
  deleteRequest,
  expireRequest,
  getRequest,
  hashGetRequest,
  hashSetRequest,
  type HashSetOptions,
  incrementRequest,
  readDeleted,
  readHashFields,
  readValue,
  setRequest,
} from "./operations";

export { CompareOperator, ListEnd, Order, SetOperation, SortedSetAddCondition };

/** A cached value and the version to pass as `ifVersion` for compare-and-swap. */
export interface Value {
  data: Buffer;
  version: bigint;
}

export type Bytes = Uint8Array | string;

export interface SetOptions extends CallOptions {
  /** Time to live in milliseconds. Default: the server's default TTL. */
  ttlMs?: number;
  /** Keep the key's remaining TTL. */
  keepTtl?: boolean;
  /** Write only if the key does not exist (KeyExistsError otherwise). */
  ifAbsent?: boolean;
  /** Write only if the key exists (KeyNotFoundError otherwise). */
  ifPresent?: boolean;
  /** Write only if the key's current version is this (VersionMismatchError otherwise). */
  ifVersion?: bigint;
  /** Reject the write if a higher LockService fencing token already wrote the key. */
  fencingToken?: bigint;
  /** Tags for invalidateTags. */
  tags?: string[];
  /** How long computing the value took, for early refresh hints. */
  recomputeTimeMs?: number;
}

export interface IncrementOptions extends CallOptions {
  /** TTL in milliseconds given to a counter this call creates. Default: the server's default TTL. */
  ttlMs?: number;
}

export interface GetOrSetOptions extends CallOptions {
  /** TTL of the stored value in milliseconds. Default: the server's default. */
  ttlMs?: number;
  /** Tags for invalidateTags. */
  tags?: string[];
  /** How long this caller may compute before another takes over. Default 10 s. */
  leaseTtlMs?: number;
  /** Keep a stale copy this long after the value goes, answered to callers that wait while it is recomputed. */
  staleTtlMs?: number;
}

/** TTL a collection write sets in the same step: for a collection it creates, and with `refreshTtl` for an existing one. */
export interface CollectionOptions extends CallOptions {
  ttlMs?: number;
  refreshTtl?: boolean;
}

/** Score bounds; an absent bound is unbounded. */
export interface ScoreRange {
  min?: number;
  max?: number;
  minExclusive?: boolean;
  maxExclusive?: boolean;
}

/** One event of watchInvalidations. */
export interface Invalidation {
  keys: string[];
  flushAll: boolean;
  synced: boolean;
}

export interface ScoredMember {
  member: Buffer;
  score: number;
}

function scoreRange(range: ScoreRange): ProtoScoreRange {
  return {
    min: range.min === undefined ? undefined : { value: range.min, exclusive: range.minExclusive ?? false },
    max: range.max === undefined ? undefined : { value: range.max, exclusive: range.maxExclusive ?? false },
  };
}

const scored = (members: { member: Buffer; score: number }[]): ScoredMember[] =>
  members.map(({ member, score }) => ({ member, score }));

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(new CancelledError(status.CANCELLED, "aborted while another caller fills the key", undefined, undefined, signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });

/** The CacheService calls; CachetClient is one. */
export class CacheCalls {
  protected readonly transport: Transport;

  constructor(transport: Transport) {
    this.transport = transport;
  }

  /** Reads key; undefined when it is absent. */
  async get(key: string, options?: CallOptions): Promise<Value | undefined> {
    return readValue(await this.transport.unary(Cache.get, getRequest(key), options));
  }

  /** Reads keys at once: one entry per key, in order, undefined when absent. */
  async getMany(keys: string[], options?: CallOptions): Promise<(Value | undefined)[]> {
    const reply = await this.transport.unary(Cache.getMany, { keys, includeTtl: false }, options);
    return reply.entries.map((e) => (e.found ? { data: e.value, version: e.version } : undefined));
  }

  /** Writes value under key; resolves to its new version. */
  async set(key: string, value: Bytes, options: SetOptions = {}): Promise<bigint> {
    return (await this.transport.unary(Cache.set, setRequest(key, value, options), options)).version;
  }

  /** Writes items (each slot's keys atomically together); resolves to their versions in order. `ttlMs` applies to items without their own. */
  async setMany(items: { key: string; value: Bytes; ttlMs?: number }[], options: IncrementOptions = {}): Promise<bigint[]> {
    const entries = items.map((item) => ({ key: item.key, value: bytes(item.value), ttl: duration(item.ttlMs) }));
    return (await this.transport.unary(Cache.setMany, { entries, ttl: duration(options.ttlMs) }, options)).versions;
  }

  /** Removes keys of any type; resolves to how many existed. */
  async delete(keys: string | string[], options?: CallOptions): Promise<number> {
    return readDeleted(await this.transport.unary(Cache.delete, deleteRequest(keys), options));
  }

  /** Tells, per key in order, whether it exists. */
  async exists(keys: string[], options?: CallOptions): Promise<boolean[]> {
    return (await this.transport.unary(Cache.exists, { keys }, options)).exists;
  }

  /** Gives an existing key of any type a new TTL; false when it is absent. */
  async expire(key: string, ttlMs: number, options?: CallOptions): Promise<boolean> {
    return (await this.transport.unary(Cache.expire, expireRequest(key, ttlMs), options)).found;
  }

  /** Removes a key's TTL (refused unless the server allows persistent keys); false when absent. */
  async persist(key: string, options?: CallOptions): Promise<boolean> {
    return (await this.transport.unary(Cache.persist, { key }, options)).found;
  }

  /** A key's remaining TTL in milliseconds: undefined when absent, -1 when it has none. */
  async ttl(key: string, options?: CallOptions): Promise<number | undefined> {
    const reply = await this.transport.unary(Cache.getTtl, { key }, options);
    if (!reply.found) return undefined;
    return reply.hasTtl ? millis(reply.ttl) : -1;
  }

  /** Adds `by` (default 1) to the integer counter at key; resolves to its new value. */
  async increment(key: string, by: number | bigint = 1, options: IncrementOptions = {}): Promise<bigint> {
    return (await this.transport.unary(Cache.increment, incrementRequest(key, { int: by }, options), options)).intValue;
  }

  /** Adds `by` to the float counter at key; resolves to its new value. */
  async incrementFloat(key: string, by: number, options: IncrementOptions = {}): Promise<number> {
    return (await this.transport.unary(Cache.increment, incrementRequest(key, { float: by }, options), options)).floatValue;
  }

  /** Deletes every key written with any of tags; resolves to how many. */
  async invalidateTags(tags: string[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.invalidateTags, { tags }, options)).deleted);
  }

  /** Deletes the namespace's keys matching a Redis glob (SCAN in batches, not a snapshot); resolves to how many. */
  async invalidatePattern(pattern: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.invalidatePattern, { pattern, batchSize: 0 }, options)).deleted);
  }

  /**
   * Key's value, computed by `compute` on a miss. Through the GetOrLease/Fill lease
   * protocol exactly one caller (of every process) computes a missing value; the
   * others wait for it, or take the stale copy (`staleTtlMs`). If the lease is lost
   * while computing (the key was written or invalidated meanwhile) the computed value
   * is answered but not stored. `signal` ends the wait.
   */
  async getOrSet(key: string, compute: () => Promise<Bytes> | Bytes, options: GetOrSetOptions = {}): Promise<Buffer> {
    for (;;) {
      const lease = await this.transport.unary(
        Cache.getOrLease,
        GetOrLeaseRequest.fromPartial({
          key,
          leaseTtl: duration(options.leaseTtlMs),
          acceptStale: (options.staleTtlMs ?? 0) > 0,
        }),
        options,
      );
      switch (lease.outcome) {
        case LeaseOutcome.LEASE_OUTCOME_HIT:
          return lease.value;
        case LeaseOutcome.LEASE_OUTCOME_LEASE_GRANTED: {
          const started = Date.now();
          const value = bytes(await compute());
          const fill = FillRequest.fromPartial({
            key,
            leaseToken: lease.leaseToken,
            value,
            ttl: duration(options.ttlMs),
            staleTtl: duration(options.staleTtlMs),
            tags: options.tags ?? [],
            recomputeTime: duration(Date.now() - started),
          });
          try {
            await this.transport.unary(Cache.fill, fill, options);
          } catch (error) {
            if (!(error instanceof LeaseLostError)) throw error;
          }
          return value;
        }
        default:
          if (lease.stale) return lease.value;
          await sleep(Math.max(millis(lease.retryAfter), 1), options.signal);
      }
    }
  }

  /**
   * Streams the namespace's keys (those starting with one of `prefixes`; none: all)
   * that change, for a near-cache (docs/near-cache.md). Resolves once the stream is
   * synced, so every change from then on is reported. Each event is `keys` that
   * changed; or `flushAll`: changes may have been missed, drop everything and serve
   * nothing from the near-cache until an event with `synced`. Leaving the loop, or
   * `signal`, ends the call.
   */
  async watchInvalidations(prefixes: string[] = [], options: CallOptions = {}): Promise<AsyncGenerator<Invalidation>> {
    const events = iterate(this.transport.serverStream(Cache.watchInvalidations, { prefixes }, options), options.signal);
    const first = await events.next();
    if (first.done || !first.value.synced) {
      await events.return(undefined);
      throw new CachetError(13, "WatchInvalidations did not begin with synced");
    }
    return (async function* () {
      for await (const event of events) {
        yield { keys: event.keys?.keys ?? [], flushAll: event.flushAll ?? false, synced: event.synced ?? false };
      }
    })();
  }

  /** Starts a transaction: `client.txn().if(...).onSuccess(...).onFailure(...).commit()`. */
  txn(): Txn {
    return new Txn(this.transport);
  }

  /**
   * Starts a Batch: `client.batch().get("a").set("b", "x").execute()` sends its operations
   * in one Batch call (several, sent at once, past the client's `maxBatch`) and resolves
   * to one OperationResult per operation, in order. Not atomic: Txn is.
   */
  batch<Results extends unknown[] = []>(): Batch<Results> {
    return new Batch<Results>(this.transport);
  }

  /**
   * A Session: one bidirectional Session stream carrying many operations at once, each
   * resolved when its answer arrives. Opened on the first operation, and again after
   * the stream breaks; `close()` waits for the outstanding answers.
   */
  session(options: SessionOptions = {}): Session {
    return new Session(this.transport, options);
  }

  /**
   * A Batcher: the batchable calls, coalescing concurrent callers into Batch calls
   * (the calls of one event-loop turn together, and while `maxInFlight` Batch calls are
   * out, the calls made meanwhile).
   */
  batcher(options: BatcherOptions = {}): Batcher {
    return new Batcher(this.transport, options);
  }

  // Hashes.

  /** Sets fields of a hash (`ifAbsent`: only fields it lacks); resolves to how many were added. */
  async hashSet(key: string, fields: Record<string, Bytes>, options: HashSetOptions & CallOptions = {}): Promise<number> {
    return Number((await this.transport.unary(Cache.hashSet, hashSetRequest(key, fields, options), options)).added);
  }

  /** Reads fields: one value per field, in order, undefined when absent. */
  async hashGet(key: string, fields: string[], options?: CallOptions): Promise<(Buffer | undefined)[]> {
    return readHashFields(await this.transport.unary(Cache.hashGet, hashGetRequest(key, fields), options));
  }

  /** Reads every field (use hashScan for large hashes). */
  async hashGetAll(key: string, options?: CallOptions): Promise<Map<string, Buffer>> {
    const reply = await this.transport.unary(Cache.hashGetAll, { key }, options);
    return new Map(reply.fields.map((f) => [f.field, f.value]));
  }

  /** Removes fields; resolves to how many existed. */
  async hashDelete(key: string, fields: string[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.hashDelete, { key, fields }, options)).deleted);
  }

  /** Adds `by` to an integer field, creating it at 0. */
  async hashIncrement(key: string, field: string, by: number | bigint = 1, options: CollectionOptions = {}): Promise<bigint> {
    const request = { key, field, byInt: BigInt(by), byFloat: undefined, ttl: collectionTtl(options), requestId: requestId() };
    return (await this.transport.unary(Cache.hashIncrement, request, options)).intValue;
  }

  /** Adds `by` to a float field, creating it at 0. */
  async hashIncrementFloat(key: string, field: string, by: number, options: CollectionOptions = {}): Promise<number> {
    const request = { key, field, byInt: undefined, byFloat: by, ttl: collectionTtl(options), requestId: requestId() };
    return (await this.transport.unary(Cache.hashIncrement, request, options)).floatValue;
  }

  /** Lists the field names. */
  async hashKeys(key: string, options?: CallOptions): Promise<string[]> {
    return (await this.transport.unary(Cache.hashKeys, { key }, options)).fields;
  }

  /** Lists the field values. */
  async hashValues(key: string, options?: CallOptions): Promise<Buffer[]> {
    return (await this.transport.unary(Cache.hashValues, { key }, options)).values;
  }

  /** Counts the fields. */
  async hashLength(key: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.hashLength, { key }, options)).length);
  }

  /** Iterates every field matching the glob `match` (default all), page by page. */
  async *hashScan(key: string, options: CallOptions & { match?: string; pageSize?: number } = {}): AsyncGenerator<[string, Buffer]> {
    let pageToken = "";
    do {
      const request = { key, pageToken, match: options.match ?? "", pageSize: options.pageSize ?? 0 };
      const reply = await this.transport.unary(Cache.hashScan, request, options);
      for (const f of reply.fields) yield [f.field, f.value];
      pageToken = reply.nextPageToken;
    } while (pageToken !== "");
  }

  // Lists.

  /** Pushes values at `end` (default right); `keepNewest` then trims to that many. Resolves to the new length. */
  async listPush(key: string, values: Bytes[], options: CollectionOptions & { end?: ListEnd; ifPresent?: boolean; keepNewest?: number } = {}): Promise<number> {
    const request = {
      key,
      values: values.map(bytes),
      end: options.end ?? ListEnd.LIST_END_RIGHT,
      ifPresent: options.ifPresent ?? false,
      keepNewest: BigInt(options.keepNewest ?? 0),
      ttl: collectionTtl(options),
      requestId: requestId(),
    };
    return Number((await this.transport.unary(Cache.listPush, request, options)).length);
  }

  /** Pops up to `count` (default 1) values from `end` (default left), waiting up to `waitMs` for one. */
  async listPop(key: string, options: CallOptions & { end?: ListEnd; count?: number; waitMs?: number } = {}): Promise<Buffer[]> {
    const request = { key, end: options.end ?? ListEnd.LIST_END_LEFT, count: options.count ?? 0, wait: duration(options.waitMs) };
    return (await this.transport.unary(Cache.listPop, request, options)).values;
  }

  /** Reads values `start`..`end` (inclusive, negative from the end). */
  async listRange(key: string, start = 0, end = -1, options?: CallOptions): Promise<Buffer[]> {
    return (await this.transport.unary(Cache.listRange, { key, range: { start: BigInt(start), end: BigInt(end) } }, options)).values;
  }

  /** Keeps only `start`..`end`; resolves to the new length. */
  async listTrim(key: string, start: number, end: number, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.listTrim, { key, range: { start: BigInt(start), end: BigInt(end) } }, options)).length);
  }

  /** Counts the values. */
  async listLength(key: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.listLength, { key }, options)).length);
  }

  /** Removes occurrences of value (`count` > 0 from the head, < 0 from the tail, 0 all). */
  async listRemove(key: string, value: Bytes, count = 0, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.listRemove, { key, value: bytes(value), count: BigInt(count) }, options)).removed);
  }

  /** Pops from `from` of source, pushes onto `to` of destination (same slot); undefined when source stayed empty. */
  async listMove(
    source: string,
    destination: string,
    options: CollectionOptions & { from?: ListEnd; to?: ListEnd; waitMs?: number } = {},
  ): Promise<Buffer | undefined> {
    const request = {
      source,
      destination,
      from: options.from ?? ListEnd.LIST_END_LEFT,
      to: options.to ?? ListEnd.LIST_END_RIGHT,
      wait: duration(options.waitMs),
      ttl: collectionTtl(options),
    };
    const reply = await this.transport.unary(Cache.listMove, request, options);
    return reply.moved ? reply.value : undefined;
  }

  // Sets.

  /** Adds members; resolves to how many were new. */
  async setAdd(key: string, members: Bytes[], options: CollectionOptions = {}): Promise<number> {
    return Number((await this.transport.unary(Cache.setAdd, { key, members: members.map(bytes), ttl: collectionTtl(options) }, options)).added);
  }

  /** Removes members; resolves to how many were there. */
  async setRemove(key: string, members: Bytes[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.setRemove, { key, members: members.map(bytes) }, options)).removed);
  }

  /** Lists the members. */
  async setMembers(key: string, options?: CallOptions): Promise<Buffer[]> {
    return (await this.transport.unary(Cache.setMembers, { key }, options)).members;
  }

  /** Tells, per value in order, whether it is a member. */
  async setIsMember(key: string, values: Bytes[], options?: CallOptions): Promise<boolean[]> {
    return (await this.transport.unary(Cache.setIsMember, { key, members: values.map(bytes) }, options)).isMember;
  }

  /** Counts the members. */
  async setCardinality(key: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.setCardinality, { key }, options)).cardinality);
  }

  /** Samples `count` members without removing them (negative: repeats allowed). */
  async setRandomMembers(key: string, count: number, options?: CallOptions): Promise<Buffer[]> {
    return (await this.transport.unary(Cache.setRandomMembers, { key, count }, options)).members;
  }

  /** Removes and answers `count` random members. */
  async setPop(key: string, count = 1, options?: CallOptions): Promise<Buffer[]> {
    return (await this.transport.unary(Cache.setPop, { key, count }, options)).members;
  }

  /** Moves a member between two sets of one slot; false when it was not in source. */
  async setMove(source: string, destination: string, member: Bytes, options: CollectionOptions = {}): Promise<boolean> {
    const request = { source, destination, member: bytes(member), ttl: collectionTtl(options) };
    return (await this.transport.unary(Cache.setMove, request, options)).moved;
  }

  /** Intersection, union or difference of sets of one slot. */
  async setCombine(operation: SetOperation, keys: string[], options?: CallOptions): Promise<Buffer[]> {
    const request = { operation, keys, destination: "", destinationTtl: undefined };
    return (await this.transport.unary(Cache.setCombine, request, options)).members;
  }

  /** Stores the combination into `destination` (same slot); resolves to its cardinality. */
  async setCombineStore(operation: SetOperation, keys: string[], destination: string, options: IncrementOptions = {}): Promise<number> {
    const request = { operation, keys, destination, destinationTtl: duration(options.ttlMs) };
    return Number((await this.transport.unary(Cache.setCombine, request, options)).cardinality);
  }

  // Sorted sets.

  /** Adds or updates scored members under `condition`; resolves to how many were added and how many added or changed. */
  async sortedSetAdd(
    key: string,
    members: { member: Bytes; score: number }[],
    options: CollectionOptions & { condition?: SortedSetAddCondition } = {},
  ): Promise<{ added: number; changed: number }> {
    const request = {
      key,
      members: members.map((m) => ({ member: bytes(m.member), score: m.score })),
      condition: options.condition ?? SortedSetAddCondition.SORTED_SET_ADD_CONDITION_UNSPECIFIED,
      ttl: collectionTtl(options),
    };
    const reply = await this.transport.unary(Cache.sortedSetAdd, request, options);
    return { added: Number(reply.added), changed: Number(reply.changed) };
  }

  /** Adds `delta` to a member's score; resolves to the new score. */
  async sortedSetIncrement(key: string, member: Bytes, delta: number, options: CollectionOptions = {}): Promise<number> {
    const request = { key, member: bytes(member), delta, ttl: collectionTtl(options), requestId: requestId() };
    return (await this.transport.unary(Cache.sortedSetIncrement, request, options)).score;
  }

  /** A member's 0-based rank in `order`; undefined when absent. */
  async sortedSetRank(key: string, member: Bytes, order = Order.ORDER_ASCENDING, options?: CallOptions): Promise<number | undefined> {
    const reply = await this.transport.unary(Cache.sortedSetRank, { key, member: bytes(member), order }, options);
    return reply.found ? Number(reply.rank) : undefined;
  }

  /** Members ranked `start`..`end` (inclusive, negative from the end) in `order`. */
  async sortedSetRangeByRank(key: string, start: number, end: number, options: CallOptions & { order?: Order } = {}): Promise<ScoredMember[]> {
    const request = {
      key,
      byRank: { start: BigInt(start), end: BigInt(end) },
      byScore: undefined,
      order: options.order ?? Order.ORDER_ASCENDING,
      offset: 0n,
      limit: 0n,
    };
    return scored((await this.transport.unary(Cache.sortedSetRange, request, options)).members);
  }

  /** Members within scores in `order`, skipping `offset`, at most `limit` (0: no limit). */
  async sortedSetRangeByScore(
    key: string,
    range: ScoreRange,
    options: CallOptions & { order?: Order; offset?: number; limit?: number } = {},
  ): Promise<ScoredMember[]> {
    const request = {
      key,
      byRank: undefined,
      byScore: scoreRange(range),
      order: options.order ?? Order.ORDER_ASCENDING,
      offset: BigInt(options.offset ?? 0),
      limit: BigInt(options.limit ?? 0),
    };
    return scored((await this.transport.unary(Cache.sortedSetRange, request, options)).members);
  }

  /** Counts members within scores. */
  async sortedSetCount(key: string, range: ScoreRange, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.sortedSetCount, { key, range: scoreRange(range) }, options)).count);
  }

  /** The score of each member in order, undefined when absent. */
  async sortedSetScore(key: string, members: Bytes[], options?: CallOptions): Promise<(number | undefined)[]> {
    const reply = await this.transport.unary(Cache.sortedSetScore, { key, members: members.map(bytes) }, options);
    return reply.scores.map((s) => (s.found ? s.score : undefined));
  }

  /** Removes members; resolves to how many were there. */
  async sortedSetRemove(key: string, members: Bytes[], options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.sortedSetRemove, { key, members: members.map(bytes) }, options)).removed);
  }

  /** Removes members ranked `start`..`end` ascending; resolves to how many. */
  async sortedSetRemoveByRank(key: string, start: number, end: number, options?: CallOptions): Promise<number> {
    const request = { key, byRank: { start: BigInt(start), end: BigInt(end) }, byScore: undefined };
    return Number((await this.transport.unary(Cache.sortedSetRemoveRange, request, options)).removed);
  }

  /** Removes members within scores; resolves to how many. */
  async sortedSetRemoveByScore(key: string, range: ScoreRange, options?: CallOptions): Promise<number> {
    const request = { key, byRank: undefined, byScore: scoreRange(range) };
    return Number((await this.transport.unary(Cache.sortedSetRemoveRange, request, options)).removed);
  }

  /** Counts the members. */
  async sortedSetCardinality(key: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.sortedSetCardinality, { key }, options)).cardinality);
  }

  // Bits.

  /** Sets (or clears) the bit at offset; resolves to its previous value. */
  async setBit(key: string, offset: number | bigint, value: boolean, options: IncrementOptions = {}): Promise<boolean> {
    const request = { key, offset: BigInt(offset), value, ttl: duration(options.ttlMs) };
    return (await this.transport.unary(Cache.setBit, request, options)).previous;
  }

  /** Reads the bit at offset (past the end: false). */
  async getBit(key: string, offset: number | bigint, options?: CallOptions): Promise<boolean> {
    return (await this.transport.unary(Cache.getBit, { key, offset: BigInt(offset) }, options)).value;
  }

  /** Counts the set bits of the whole value. */
  async bitCount(key: string, options?: CallOptions): Promise<number> {
    return Number((await this.transport.unary(Cache.bitCount, { key, range: undefined, unit: 0 }, options)).count);
  }
}

/** Comparisons for Txn.if. */
export const compare = {
  /** Holds when key exists (`exists` false: when it does not). */
  exists: (key: string, exists = true): Compare => ({ key, operator: CompareOperator.COMPARE_OPERATOR_EQUAL, exists }),
  /** Holds when key's value is `value`, byte for byte. */
  value: (key: string, value: Bytes): Compare => ({ key, operator: CompareOperator.COMPARE_OPERATOR_EQUAL, value: bytes(value) }),
  /** Compares key's version (absent: 0). */
  version: (key: string, version: bigint, operator = CompareOperator.COMPARE_OPERATOR_EQUAL): Compare => ({ key, operator, version }),
  /** Compares key's value read as a number (absent: 0). */
  number: (key: string, operator: CompareOperator, number: number): Compare => ({ key, operator, number }),
  /** Compares key's remaining TTL in milliseconds (absent: -2, none: -1). */
  ttl: (key: string, operator: CompareOperator, ttlMs: number): Compare => ({ key, operator, ttlMs: BigInt(ttlMs) }),
};

/** Operations for Txn.onSuccess and Txn.onFailure. */
export const op = {
  set: (key: string, value: Bytes, ttlMs?: number): TxnOp => ({ set: { key, value: bytes(value), ttl: duration(ttlMs) } }),
  delete: (key: string): TxnOp => ({ delete: { key } }),
  increment: (key: string, by: number | bigint = 1, ttlMs?: number): TxnOp => ({ increment: { key, byInt: BigInt(by), ttl: duration(ttlMs) } }),
  get: (key: string): TxnOp => ({ get: { key } }),
};

/**
 * An etcd-style transaction: comparisons, then the `onSuccess` operations if all
 * hold, else the `onFailure` ones, atomically. All keys must share a Redis Cluster slot (a
 * common hash tag, `{acct}:alice`), else CrossSlotError on every topology.
 */
export class Txn {
  private readonly request = TxnRequest.fromPartial({});

  constructor(private readonly transport: Transport) {}

  if(...compares: Compare[]): this {
    this.request.compare.push(...compares);
    return this;
  }

  /** Operations run when every comparison holds (not `then`: a Txn must not look like a promise). */
  onSuccess(...ops: TxnOp[]): this {
    this.request.success.push(...ops);
    return this;
  }

  /** Operations run when a comparison fails. */
  onFailure(...ops: TxnOp[]): this {
    this.request.failure.push(...ops);
    return this;
  }

  /** Runs it: which branch ran, and one result per operation of that branch. */
  async commit(options?: CallOptions): Promise<{ succeeded: boolean; results: TxnOpResult[] }> {
    const reply = await this.transport.unary(Cache.txn, this.request, options);
    return { succeeded: reply.succeeded, results: reply.results };
  }
}
