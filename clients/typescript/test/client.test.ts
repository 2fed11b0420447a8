import assert from "node:assert/strict";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { InterceptingCall, type Interceptor, Metadata } from "@grpc/grpc-js";
import { after, before, test } from "node:test";
import {
  AbortedError,
  Algorithm,
  CachetClient,
  CachetError,
  CancelledError,
  CrossSlotError,
  cachev1,
  compare,
  DeadlineExceededError,
  errorDetails,
  errorReason,
  FailedPreconditionError,
  GroupExistsError,
  GroupNotFoundError,
  IDEMPOTENT_METHODS,
  REQUEST_ID_METHODS,
  InvalidArgumentError,
  KeyNotFoundError,
  LeaseLostError,
  ListEnd,
  LockHeldError,
  LockNotOwnedError,
  isServiceError,
  op,
  Order,
  parseLimit,
  PermissionDeniedError,
  PolicyNotFoundError,
  RateLimitedError,
  ResourceExhaustedError,
  SemaphoreFullError,
  SetOperation,
  status,
  StreamNotFoundError,
  target,
  toCachetError,
  UnauthenticatedError,
  VersionMismatchError,
  WrongTypeError,
} from "../src";
import { AdminServiceService } from "../src/gen/cachet/admin/v1/admin";
import { CacheServiceService } from "../src/gen/cachet/cache/v1/cache";
import { EventBusServiceService } from "../src/gen/cachet/eventbus/v1/eventbus";
import { LockServiceService } from "../src/gen/cachet/lock/v1/lock";
import { RateLimitServiceService } from "../src/gen/cachet/ratelimit/v1/ratelimit";
import { type RunningServer, startServer } from "./server";

let server: RunningServer;
const clients: CachetClient[] = [];
let namespaces = 0;

before(async () => {
  server = await startServer();
});

after(async () => {
  clients.forEach((client) => client.close());
  await server?.stop();
});

/** A client in a namespace no other test uses (or in `namespace`). */
function connect(namespace = `ts-${process.pid}-${Date.now()}-${++namespaces}`): CachetClient {
  const client = new CachetClient(server.address, { namespace });
  clients.push(client);
  return client;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Asserts the call rejects with the gRPC code and google.rpc.ErrorInfo reason. */
async function rejectsWith(call: Promise<unknown>, code: status, reason: string) {
  const error = await call.then(
    () => assert.fail(`expected ${status[code]} ${reason}`),
    (error: unknown) => error,
  );
  assert.ok(isServiceError(error), `not a gRPC error: ${error}`);
  assert.equal(error.code, code, `${error.message}`);
  assert.equal(errorReason(error), reason);
  assert.equal(errorDetails(error)?.domain, "cachet.dev");
  return error;
}

test("set, get and delete", async () => {
  const client = connect();
  const version = await client.set("user:1", "alice", { ttlMs: 60_000 });
  assert.ok(version > 0n);
  const value = await client.get("user:1");
  assert.deepEqual(value, { data: Buffer.from("alice"), version });
  assert.equal(await client.delete(["user:1", "never-written"]), 1);
  assert.equal(await client.get("user:1"), undefined);
});

test("increment counts and refuses a non-number", async () => {
  const client = connect();
  assert.equal(await client.increment("hits", 5, { ttlMs: 60_000 }), 5n);
  assert.equal(await client.increment("hits"), 6n);
  assert.equal(await client.increment("hits", -10n), -4n);
  await client.set("name", "bob");
  await rejectsWith(client.increment("name"), status.FAILED_PRECONDITION, "NOT_A_NUMBER");
});

test("namespaces are isolated, generated stubs from stub() carry the namespace", async () => {
  const shop = connect();
  const blog = connect();
  await shop.set("k", "shop's");
  assert.equal(await blog.get("k"), undefined);
  const raw = shop.stub(cachev1.CacheServiceClient);
  const reply = await new Promise<cachev1.GetResponse>((resolve, reject) =>
    raw.get({ key: "k", includeTtl: false, earlyRefreshBeta: 0 }, (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
  assert.equal(reply.found, true);
  assert.equal(reply.value.toString(), "shop's");
});

test("an empty key is INVALID_ARGUMENT naming the field", async () => {
  const error = await rejectsWith(connect().get(""), status.INVALID_ARGUMENT, "INVALID_ARGUMENT");
  assert.deepEqual(
    errorDetails(error)?.fieldViolations.map((v) => v.field),
    ["key"],
  );
});

test("a stale ifVersion is ABORTED VERSION_MISMATCH and changes nothing", async () => {
  const client = connect();
  const first = await client.set("doc", "v1");
  const second = await client.set("doc", "v2", { ifVersion: first });
  assert.ok(second > first);
  await rejectsWith(client.set("doc", "lost update", { ifVersion: first }), status.ABORTED, "VERSION_MISMATCH");
  assert.equal((await client.get("doc"))?.data.toString(), "v2");
});

test("ifAbsent on an existing key is FAILED_PRECONDITION KEY_EXISTS", async () => {
  const client = connect();
  await client.set("once", "first", { ifAbsent: true });
  await rejectsWith(client.set("once", "second", { ifAbsent: true }), status.FAILED_PRECONDITION, "KEY_EXISTS");
});

test("errors are CachetError subclasses carrying the google.rpc details", async () => {
  const client = connect();
  const first = await client.set("doc", "v1");
  const error = await client.set("doc", "v2", { ifVersion: first + 1n }).catch((e: unknown) => e);
  assert.ok(error instanceof VersionMismatchError && error instanceof AbortedError && error instanceof CachetError);
  assert.equal(error.code, status.ABORTED);
  assert.equal(error.reason, "VERSION_MISMATCH");
  assert.equal(error.errorMetadata["current_version"], String(first));
  assert.equal(error.name, "VersionMismatchError");
  assert.ok(isServiceError(error)); // still a grpc-js ServiceError
  await assert.rejects(client.set("missing", "x", { ifPresent: true }), KeyNotFoundError);
  const bad = await client.getMany([]).catch((e: unknown) => e);
  assert.ok(bad instanceof InvalidArgumentError && bad.fieldViolations.length > 0);
  // A raw stub's error converts too.
  const raw = await new Promise((resolve) => client.cache.get({ key: "", includeTtl: false, earlyRefreshBeta: 0 }, resolve));
  const converted = toCachetError(raw);
  assert.ok(converted instanceof InvalidArgumentError && converted.fieldViolations[0]?.field === "key");
  assert.equal(toCachetError("plain"), "plain");
});

test("deadlines and AbortSignal end calls", async () => {
  const client = connect();
  await assert.rejects(client.listPop("{l}empty", { waitMs: 5000, timeoutMs: 1 }), DeadlineExceededError);
  const controller = new AbortController();
  const waiting = client.listPop("{l}empty", { waitMs: 5000, timeoutMs: 10_000, signal: controller.signal });
  setTimeout(() => controller.abort(new Error("user went away")), 50);
  const error = await waiting.catch((e: unknown) => e);
  assert.ok(error instanceof CancelledError, `${error}`);
  assert.equal((error.cause as Error).message, "user went away");
  await assert.rejects(client.get("k", { signal: AbortSignal.abort() }), CancelledError);
  const short = new CachetClient(server.address, { namespace: "ts-short", timeoutMs: 1 });
  clients.push(short);
  await assert.rejects(short.listPop("empty", { waitMs: 5000 }), DeadlineExceededError);
});

test("cache batches, TTLs and invalidation", async () => {
  const client = connect();
  const versions = await client.setMany([{ key: "a", value: "1" }, { key: "b", value: "2", ttlMs: 3_600_000 }], { ttlMs: 60_000 });
  assert.equal(versions.length, 2);
  const [a, missing, b] = await client.getMany(["a", "missing", "b"]);
  assert.equal(a?.data.toString(), "1");
  assert.equal(missing, undefined);
  assert.equal(b?.version, versions[1]);
  assert.deepEqual(await client.exists(["a", "missing"]), [true, false]);
  const ttl = await client.ttl("b");
  assert.ok(ttl !== undefined && ttl > 3_500_000 && ttl <= 3_600_000, `${ttl}`);
  assert.equal(await client.expire("b", 10_000), true);
  assert.ok((await client.ttl("b"))! <= 10_000);
  assert.equal(await client.ttl("missing"), undefined);
  assert.equal(await client.expire("missing", 1000), false);
  await assert.rejects(client.persist("a"), (e: unknown) => e instanceof FailedPreconditionError && e.reason === "PERSIST_DISABLED");
  await client.set("a", "3", { keepTtl: true });
  const kept = await client.ttl("a");
  assert.ok(kept !== undefined && kept > 0 && kept <= 60_000);
  assert.equal(await client.incrementFloat("f", 1.5), 1.5);
  await client.set("user:1", "x");
  await client.set("user:2", "y");
  assert.equal(await client.invalidatePattern("user:*"), 2);
  await assert.rejects(client.invalidatePattern(""), InvalidArgumentError);
});

test("getOrSet computes once across callers", async () => {
  const client = connect();
  const other = connect(client.namespace); // another channel: another process, as far as the server knows
  let computed = 0;
  const compute = async () => {
    computed++;
    await sleep(100);
    return "expensive";
  };
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) => (i % 2 ? client : other).getOrSet("report", compute, { ttlMs: 60_000 })),
  );
  assert.deepEqual(results.map(String), Array(8).fill("expensive"));
  assert.equal(computed, 1);
  await assert.rejects(client.getOrSet("failing", () => Promise.reject(new Error("store down")), { leaseTtlMs: 100 }), /store down/);
  // A write during the computation voids the lease: the computed value is answered, the newer write kept.
  const value = await client.getOrSet("raced", async () => {
    await other.set("raced", "newer");
    return "computed";
  });
  assert.equal(value.toString(), "computed");
  assert.equal((await client.get("raced"))?.data.toString(), "newer");
});

test("getOrSet answers the stale copy while another caller recomputes", async () => {
  const client = connect();
  const options = { ttlMs: 60_000, staleTtlMs: 60_000, tags: ["t"] };
  await client.getOrSet("k", () => "old", options);
  await client.invalidateTags(["t"]);
  let release = () => {};
  let computing = () => {};
  const started = new Promise<void>((resolve) => (computing = resolve));
  const recompute = client.getOrSet("k", () => {
    computing();
    return new Promise<string>((resolve) => (release = () => resolve("new")));
  }, options);
  await started;
  assert.equal((await client.getOrSet("k", () => "second", options)).toString(), "old");
  release();
  assert.equal((await recompute).toString(), "new");
});

test("getOrSet: a signal ends the wait for another caller's fill", async () => {
  const client = connect();
  let release = () => {};
  let computing = () => {};
  const started = new Promise<void>((resolve) => (computing = resolve));
  const filling = client.getOrSet("slow", () => {
    computing();
    return new Promise<string>((resolve) => (release = () => resolve("done")));
  });
  await started;
  const waiting = client.getOrSet("slow", () => "never", { signal: AbortSignal.timeout(100) });
  const error = await waiting.catch((e: unknown) => e);
  assert.ok(error instanceof CancelledError, `${error}`);
  release();
  assert.equal((await filling).toString(), "done");
});

test("txn runs one branch atomically", async () => {
  const client = connect();
  const v = await client.set("{acct}:alice", "100");
  let result = await client
    .txn()
    .if(compare.version("{acct}:alice", v), compare.exists("{acct}:bob", false))
    .onSuccess(op.set("{acct}:alice", "90", 60_000), op.increment("{acct}:bob", 10), op.get("{acct}:alice"))
    .onFailure(op.get("{acct}:alice"))
    .commit();
  assert.equal(result.succeeded, true);
  assert.equal(result.results[1]?.intValue, 10n);
  assert.equal(result.results[2]?.value.toString(), "90");
  result = await client.txn().if(compare.value("{acct}:alice", "100")).onSuccess(op.delete("{acct}:alice")).onFailure(op.get("{acct}:alice")).commit();
  assert.equal(result.succeeded, false);
  assert.equal(result.results[0]?.value.toString(), "90");
  result = await client
    .txn()
    .if(compare.number("{acct}:bob", 5, 10), compare.ttl("{acct}:bob", 3, 0))
    .onSuccess(op.delete("{acct}:bob"))
    .commit();
  assert.equal(result.succeeded, true);
  await assert.rejects(client.txn().onSuccess(op.set("a", ""), op.set("b", "")).commit(), CrossSlotError);
});

test("collections", async () => {
  const client = connect();
  const ttl = { ttlMs: 60_000 };
  assert.equal(await client.hashSet("h", { a: "1", b: "2" }, ttl), 2);
  assert.deepEqual((await client.hashGet("h", ["a", "zz"])).map((v) => v?.toString()), ["1", undefined]);
  assert.equal(await client.hashIncrement("h", "n", 5, ttl), 5n);
  assert.equal(await client.hashIncrementFloat("h", "f", 0.5, ttl), 0.5);
  assert.equal(await client.hashLength("h"), 4);
  assert.equal((await client.hashGetAll("h")).get("b")?.toString(), "2");
  assert.equal((await client.hashKeys("h")).length, 4);
  assert.equal((await client.hashValues("h")).length, 4);
  const scanned = [];
  for await (const [field] of client.hashScan("h", { match: "a" })) scanned.push(field);
  assert.deepEqual(scanned, ["a"]);
  assert.equal(await client.hashDelete("h", ["a", "zz"]), 1);

  assert.equal(await client.listPush("{l}1", ["a", "b", "c", "b"], ttl), 4);
  assert.equal((await client.listRange("{l}1")).length, 4);
  assert.equal(await client.listRemove("{l}1", "b"), 2);
  assert.deepEqual((await client.listPop("{l}1")).map(String), ["a"]);
  assert.equal((await client.listMove("{l}1", "{l}2", ttl))?.toString(), "c");
  assert.equal(await client.listMove("{l}1", "{l}2"), undefined);
  await client.listPush("{l}2", ["d", "e"], { end: ListEnd.LIST_END_RIGHT });
  assert.equal(await client.listTrim("{l}2", 0, 1), 2);
  assert.equal(await client.listLength("{l}2"), 2);

  assert.equal(await client.setAdd("{s}1", ["x", "y", "z"], ttl), 3);
  await client.setAdd("{s}2", ["y"], ttl);
  assert.deepEqual(await client.setIsMember("{s}1", ["x", "q"]), [true, false]);
  assert.deepEqual((await client.setCombine(SetOperation.SET_OPERATION_INTERSECT, ["{s}1", "{s}2"])).map(String), ["y"]);
  assert.equal(await client.setCombineStore(SetOperation.SET_OPERATION_UNION, ["{s}1", "{s}2"], "{s}3", ttl), 3);
  assert.equal(await client.setMove("{s}1", "{s}2", "x", ttl), true);
  assert.equal(await client.setRemove("{s}1", ["y"]), 1);
  assert.deepEqual((await client.setMembers("{s}1")).map(String), ["z"]);
  assert.equal((await client.setRandomMembers("{s}2", 5)).length, 2);
  assert.deepEqual((await client.setPop("{s}1")).map(String), ["z"]);
  assert.equal(await client.setCardinality("{s}1"), 0);

  const members = [{ member: "a", score: 1 }, { member: "b", score: 2 }, { member: "c", score: 3 }];
  assert.deepEqual(await client.sortedSetAdd("z", members, ttl), { added: 3, changed: 3 });
  assert.equal(await client.sortedSetIncrement("z", "a", 10), 11);
  assert.equal(await client.sortedSetRank("z", "a", Order.ORDER_DESCENDING), 0);
  assert.equal(await client.sortedSetRank("z", "q"), undefined);
  assert.deepEqual((await client.sortedSetRangeByRank("z", 0, 0)).map((m) => m.member.toString()), ["b"]);
  const byScore = await client.sortedSetRangeByScore("z", { min: 2, max: 3 }, { order: Order.ORDER_DESCENDING });
  assert.deepEqual(byScore.map((m) => [m.member.toString(), m.score]), [["c", 3], ["b", 2]]);
  assert.equal(await client.sortedSetCount("z", { min: 2, minExclusive: true }), 2);
  assert.deepEqual(await client.sortedSetScore("z", ["b", "q"]), [2, undefined]);
  assert.equal(await client.sortedSetRemoveByScore("z", { max: 2 }), 1);
  assert.equal(await client.sortedSetRemoveByRank("z", 0, 0), 1);
  assert.equal(await client.sortedSetRemove("z", ["a"]), 1);
  assert.equal(await client.sortedSetCardinality("z"), 0);

  assert.equal(await client.setBit("bits", 7, true, ttl), false);
  assert.equal(await client.getBit("bits", 7), true);
  assert.equal(await client.bitCount("bits"), 1);
  await assert.rejects(client.hashLength("bits"), WrongTypeError);
});

test("locks and semaphores", async () => {
  const client = connect();
  const lease = await client.locks.acquire("job", 5000, { holder: "ts-test" });
  const held = await client.locks.acquire("job", 1000, { waitMs: 50 }).catch((e: unknown) => e);
  assert.ok(held instanceof LockHeldError && held.errorMetadata["remaining_ttl_ms"] !== undefined);
  const before = lease.expireTime;
  await client.locks.extend(lease, 60_000);
  assert.ok(lease.expireTime > before);
  const state = await client.locks.inspect("job");
  assert.equal(state.held, true);
  assert.equal(state.holder, "ts-test");
  assert.equal(state.fencingToken, lease.fencingToken);
  await client.locks.release(lease);
  await assert.rejects(client.locks.release(lease), LockNotOwnedError);
  await assert.rejects(client.locks.extend(lease, 1000), LockNotOwnedError);

  const first = await client.locks.acquire("queue", 5000);
  const waiter = client.locks.acquire("queue", 5000, { waitMs: 5000 });
  await sleep(50);
  await client.locks.release(first);
  assert.ok((await waiter).fencingToken > first.fencingToken);

  const a = await client.locks.acquireSemaphore("pool", 2, 5000);
  const b = await client.locks.acquireSemaphore("pool", 2, 5000);
  assert.ok(b.fencingToken > a.fencingToken);
  await assert.rejects(client.locks.acquireSemaphore("pool", 2, 1000), SemaphoreFullError);
  await assert.rejects(client.locks.acquireSemaphore("pool", 3, 1000), (e: unknown) => e instanceof CachetError && e.reason === "SEMAPHORE_LIMIT_MISMATCH");
  await client.locks.extendSemaphore(a, 60_000);
  const pool = await client.locks.inspectSemaphore("pool");
  assert.equal(pool.holders.length, 2);
  assert.equal(pool.limit, 2n);
  await client.locks.releaseSemaphore(a);
  await assert.rejects(client.locks.releaseSemaphore(a), LockNotOwnedError);
  await client.locks.acquireSemaphore("pool", 2, 1000);
});

test("hold keeps the lock, renews it, and signals its loss", async () => {
  const client = connect();
  const held = await client.locks.hold("leader", 1000, { renewIntervalMs: 250 });
  const firstExpiry = held.expireTime;
  await sleep(1500); // longer than the TTL
  await assert.rejects(client.locks.acquire("leader", 1000), LockHeldError);
  assert.ok(held.expireTime > firstExpiry, "no renewal recorded");
  assert.equal(held.signal.aborted, false);
  const lost = new Promise((resolve) => held.signal.addEventListener("abort", resolve));
  await client.admin.flushNamespace(client.namespace); // someone wipes the lock
  await lost;
  assert.ok(held.signal.reason instanceof LeaseLostError, `${held.signal.reason}`);
  await assert.rejects(held.release(), LeaseLostError);

  const again = await client.locks.hold("leader", 5000);
  await Promise.all([again.release(), again.release()]);
  assert.equal(again.signal.aborted, false);
  const lease = await client.locks.acquire("leader", 1000);
  assert.ok(lease.fencingToken > again.fencingToken);
  await client.locks.release(lease);

  const controller = new AbortController();
  const cancelled = await client.locks.hold("leader", 5000, { signal: controller.signal });
  controller.abort();
  await new Promise((resolve) => cancelled.signal.addEventListener("abort", resolve));
  assert.ok(cancelled.signal.reason instanceof CancelledError, `${cancelled.signal.reason}`);
  await client.locks.acquire("leader", 30_000, { waitMs: 5000 }); // the server freed it
  await assert.rejects(client.locks.hold("leader", 1000, { waitMs: 50 }), LockHeldError);
});

test("rate limits", async () => {
  const client = connect();
  const limits = client.rateLimits;
  const a = target.inline("{t}a", { limit: 3, periodMs: 3_600_000, algorithm: Algorithm.ALGORITHM_SLIDING_WINDOW_LOG }); // exact: no window ends mid-test
  const b = target.inline("{t}b", { limit: 1, periodMs: 3_600_000, algorithm: Algorithm.ALGORITHM_GCRA });
  const spent = await limits.check(a, { hits: 2 });
  assert.deepEqual([spent.allowed, spent.remaining, spent.limit], [true, 1n, 3n]);
  let many = await limits.checkMany([a, a], { allOrNothing: true });
  assert.equal(many.allowed, false);
  assert.equal((await limits.peek(a)).remaining, 1n);
  many = await limits.checkMany([a, b, b]);
  assert.deepEqual([many.allowed, ...many.decisions.map((d) => d.allowed)], [false, true, true, false]);
  await assert.rejects(limits.checkMany([target.inline("x", "1/hour"), target.inline("y", "1/hour")], { allOrNothing: true }), CrossSlotError);
  assert.equal(await limits.reset([a, b, target.inline("{t}never", "1/hour")]), 2);
  assert.equal((await limits.peek(a)).remaining, 3n);
  await assert.rejects(limits.check(target.policy("no-such-policy", "k")), PolicyNotFoundError);
  await assert.rejects(limits.check(target.descriptor("no-such-domain", { remote_address: "10.0.0.1" })), PolicyNotFoundError);
  await assert.rejects(limits.check(target.inline("k", { limit: 0, periodMs: 1000 })), InvalidArgumentError);
  assert.deepEqual(await limits.policies(), []);
  assert.deepEqual(parseLimit("10/minute"), { limit: 10, periodMs: 60_000 });
  assert.deepEqual(parseLimit("100 / 5 seconds"), { limit: 100, periodMs: 5000 });
  assert.throws(() => parseLimit("ten a minute"), /10\/minute/);
});

test("event streams, groups, claims and dead letters", async () => {
  const client = connect();
  const events = client.events;
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await events.append("s", { type: "t", payload: String(i) }));
  const read = await events.read("s", { afterId: ids[0] });
  assert.deepEqual(read.map((e) => e.id), ids.slice(1));
  const newestFirst = [];
  for await (const e of events.range("s", { reverse: true, pageSize: 2 })) newestFirst.push(e.id);
  assert.deepEqual(newestFirst, [...ids].reverse());
  assert.equal(await events.createGroup("s", "g", { startId: "0", maxDeliveries: 1 }), true);
  await assert.rejects(events.createGroup("s", "g"), GroupExistsError);
  assert.equal(await events.createGroup("s", "g", { ifNotExists: true }), false);
  await assert.rejects(events.createGroup("nope", "g"), StreamNotFoundError);
  const got = [];
  for await (const delivery of events.consume("s", "g", "c1", { batchSize: 10 })) {
    got.push(delivery);
    if (got.length === 3) break;
  }
  assert.equal(got[0]?.event.deliveryCount, 1n);
  assert.equal(got[2]?.event.payload.toString(), "2");
  await got[0]?.ack();
  assert.equal(await events.ack("s", "g", [ids[0]!]), 0);
  assert.equal((await events.pending("s", "g")).count, 2n);
  assert.equal((await events.listPending({ stream: "s", group: "g" })).entries.length, 2);
  await sleep(5);
  const claimed = await events.claim("s", "g", "c2", 1);
  assert.equal(claimed.deliveries.length, 0);
  assert.equal(claimed.deadLettered.length, 2); // delivered once already, with maxDeliveries 1
  const dead = await events.deadLetters("s");
  assert.equal(dead[0]?.deadLetter?.originalId, ids[1]);
  const info = await events.info("s", { includeConsumers: true });
  assert.equal(info.length, 3n);
  assert.equal(info.deadLetterLength, 2n);
  assert.ok((info.groups[0]?.consumers.length ?? 0) > 0);
  assert.equal(await events.trim("s", { maxLen: 1 }), 2);
  assert.equal(await events.trim("s", { minId: "99999999999999-0" }), 1);
  assert.equal(await events.deleteGroup("s", "g"), true);
  await assert.rejects(async () => {
    for await (const _ of events.consume("s", "g", "c1")) break;
  }, GroupNotFoundError);
  await assert.rejects(events.info("nope"), StreamNotFoundError);
});

test("claim takes over an idle consumer's events", async () => {
  const client = connect();
  const events = client.events;
  const id = await events.append("jobs", { payload: "job" });
  await events.createGroup("jobs", "workers", { startId: "0" });
  for await (const _ of events.consume("jobs", "workers", "crashed")) break; // "crash" without acking
  await sleep(5);
  const claimed = await events.claim("jobs", "workers", "rescuer", 1, { ids: [id] });
  assert.equal(claimed.deliveries[0]?.event.deliveryCount, 2n);
  await claimed.deliveries[0]?.ack();
  assert.equal((await events.pending("jobs", "workers")).count, 0n);
});

test("subscribe: bad input, and leaving the loop ends the subscription", async () => {
  const client = connect();
  await assert.rejects(client.events.subscribe([]), InvalidArgumentError);
  await assert.rejects(client.events.publish("", {}), InvalidArgumentError);
  const messages = await client.events.subscribe(["t"]);
  assert.equal(await client.events.publish("t", { payload: "one" }), 1);
  for await (const _ of messages) break;
  let receivers = 1;
  for (let i = 0; i < 50 && receivers > 0; i++) {
    receivers = await client.events.publish("t", { payload: "two" });
    if (receivers > 0) await sleep(20);
  }
  assert.equal(receivers, 0, "the subscription outlived the loop");
});

test("admin", async () => {
  const client = connect();
  const admin = client.admin;
  await client.set("big", "x".repeat(10_000));
  const info = await admin.serverInfo();
  assert.ok(info.redisVersion !== "" && info.nodes.length > 0);
  assert.ok((await admin.serviceStats()).methods.length > 0);
  await admin.slowLog();
  assert.equal(await admin.resetSlowLog(), 1);
  assert.equal((await admin.memoryStats()).length, 1);
  assert.ok((await admin.keyMemoryUsage("big"))! >= 10_000);
  assert.equal(await admin.keyMemoryUsage("missing"), undefined);
  assert.deepEqual((await admin.bigKeys()).keys.map((k) => k.key), ["big"]);
  assert.ok((await admin.clients()).clients.length > 0);
  const config = await admin.config(["maxmemory-policy"]);
  assert.ok(config.whitelist.length > 0);
  const previous = config.parameters[0]?.values[0]?.value ?? "";
  assert.equal((await admin.setConfig({ "maxmemory-policy": previous })).length, 1);
  await assert.rejects(admin.config(["requirepass"]), PermissionDeniedError);
  await assert.rejects(admin.flushNamespace("not-this-one"), (e: unknown) => e instanceof CachetError && e.reason === "CONFIRMATION_MISMATCH");
  const counted = await admin.flushNamespace(admin.namespace, { dryRun: true });
  assert.deepEqual(await admin.scanKeys(), ["big"]);
  assert.equal(await admin.flushNamespace(admin.namespace), counted);
  assert.deepEqual(await admin.scanKeys(), []);
});

test("the retry policy names only real, idempotent methods", () => {
  const services: Record<string, Record<string, { path: string }>> = {
    "cachet.cache.v1.CacheService": CacheServiceService,
    "cachet.lock.v1.LockService": LockServiceService,
    "cachet.ratelimit.v1.RateLimitService": RateLimitServiceService,
    "cachet.eventbus.v1.EventBusService": EventBusServiceService,
    "cachet.admin.v1.AdminService": AdminServiceService,
  };
  for (const [service, methods] of Object.entries(IDEMPOTENT_METHODS)) {
    const paths = new Set(Object.values(services[service] ?? {}).map((m) => m.path));
    for (const method of methods) {
      assert.ok(paths.has(`/${service}/${method}`), `${service}/${method} does not exist`);
      assert.ok(!["Set", "Increment", "Acquire", "Release", "Append", "Check"].includes(method), `${method} is not idempotent`);
    }
  }
});

test("the request-id methods take a request_id", () => {
  const services: Record<string, Record<string, { path: string; requestDeserialize: (b: Buffer) => object }>> = {
    "cachet.cache.v1.CacheService": CacheServiceService,
    "cachet.eventbus.v1.EventBusService": EventBusServiceService,
  };
  for (const [service, methods] of Object.entries(REQUEST_ID_METHODS)) {
    for (const method of methods) {
      const definition = Object.values(services[service] ?? {}).find((m) => m.path === `/${service}/${method}`);
      assert.ok(definition && "requestId" in definition.requestDeserialize(Buffer.alloc(0)), `${service}/${method} takes no request_id`);
    }
  }
});

test("writes that could apply twice carry a fresh request_id", async () => {
  const sent = new Map<string, string[]>();
  const record: Interceptor = (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      sendMessage(message: { requestId?: string }, next) {
        if (message.requestId !== undefined) {
          sent.set(options.method_definition.path, [...(sent.get(options.method_definition.path) ?? []), message.requestId]);
        }
        next(message);
      },
    });
  const client = new CachetClient(server.address, { namespace: `ts-request-id-${Date.now()}`, channelOptions: { interceptors: [record] } });
  clients.push(client);
  for (let i = 0; i < 2; i++) {
    await client.increment("n");
    await client.incrementFloat("f", 1);
    await client.hashIncrement("h", "n");
    await client.listPush("l", ["x"]);
    await client.sortedSetIncrement("z", "m", 1);
    await client.events.publish("t", {});
    await client.events.append("s", {});
  }
  assert.equal(await client.increment("n", 0), 2n);
  let calls = 0;
  for (const [service, methods] of Object.entries(REQUEST_ID_METHODS)) {
    for (const method of methods) {
      const ids = sent.get(`/${service}/${method}`) ?? [];
      calls += ids.length;
      assert.ok(ids.every((id) => id !== "") && new Set(ids).size === ids.length, `${method} sent ${ids}`);
    }
  }
  assert.ok(calls >= 14, `recorded ${calls} calls with a request_id`);
});

test("watchInvalidations reports the changed keys once synced", async () => {
  const client = connect();
  const changes = await client.watchInvalidations(["user:"]);
  await client.set("other", "ignored");
  await client.set("user:1", "x");
  await client.delete("user:1");
  const changed: string[] = [];
  for await (const change of changes) {
    if (change.flushAll || change.synced) continue;
    changed.push(...change.keys);
    if (changed.length >= 2) break;
  }
  assert.ok(changed.every((key) => key === "user:1"), `${changed}`);
  await assert.rejects(client.watchInvalidations([""]), InvalidArgumentError);
});

test("a credential needs TLS; a failing token source fails the call", async () => {
  assert.throws(() => new CachetClient(server.address, { token: "secret" }), /needs TLS/);
  assert.throws(() => new CachetClient(server.address, { tls: { cert: "x" } }), /both `cert` and `key`/);
  const client = new CachetClient(server.address, {
    token: () => Promise.reject(new Error("vault down")),
    allowPlaintextToken: true,
  });
  clients.push(client);
  const error = await client.get("k").catch((e: unknown) => e);
  assert.ok(error instanceof UnauthenticatedError, `${error}`);
  assert.match(error.message, /vault down/);
  const refreshed = new CachetClient(server.address, { token: async () => "fresh", allowPlaintextToken: true, namespace: "ts-token" });
  clients.push(refreshed);
  await refreshed.set("k", "v"); // auth is off on this server: the header is sent and ignored
  assert.equal((await refreshed.get("k"))?.data.toString(), "v");
});

test("RESOURCE_EXHAUSTED with a RetryInfo is a RateLimitedError with retryAfterMs", () => {
  // Built here (the test server has no quota): google.rpc.Status with an ErrorInfo and a RetryInfo.
  const any = (type: string, value: Uint8Array) => new BinaryWriter().uint32(10).string(`type.googleapis.com/${type}`).uint32(18).bytes(value).finish();
  const retryInfo = new BinaryWriter().uint32(10).fork().uint32(8).int64(1).uint32(16).int32(500_000_000).join().finish();
  const errorInfo = new BinaryWriter().uint32(10).string("QUOTA_EXCEEDED").uint32(18).string("cachet.dev").finish();
  const details = new BinaryWriter()
    .uint32(8).int32(status.RESOURCE_EXHAUSTED)
    .uint32(18).string("slow down")
    .uint32(26).bytes(any("google.rpc.ErrorInfo", errorInfo))
    .uint32(26).bytes(any("google.rpc.RetryInfo", retryInfo))
    .finish();
  const trailers = new Metadata();
  trailers.set("grpc-status-details-bin", Buffer.from(details));
  const raw = Object.assign(new Error("slow down"), { code: status.RESOURCE_EXHAUSTED, details: "slow down", metadata: trailers });
  const error = toCachetError(raw);
  assert.ok(error instanceof RateLimitedError, `${error}`);
  assert.equal(error.retryAfterMs, 1500);
  assert.equal(error.reason, "QUOTA_EXCEEDED");
  const plain = toCachetError(Object.assign(new Error("busy"), { code: status.RESOURCE_EXHAUSTED, details: "busy", metadata: new Metadata() }));
  assert.ok(plain instanceof ResourceExhaustedError && !(plain instanceof RateLimitedError));
});
