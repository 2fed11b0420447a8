// Batch, Session and Batcher against a live server: values per operation, each failed
// operation its own error (the unary call's class and details), splitting past
// maxBatch, coalescing and Session packing counted by an interceptor (and Batch calls by
// the server's own stats), and a server that freezes and crashes under a session with
// operations outstanding.
import assert from "node:assert/strict";
import { InterceptingCall, type Interceptor } from "@grpc/grpc-js";
import { after, before, test } from "node:test";
import {
  CachetClient,
  CachetError,
  CancelledError,
  DeadlineExceededError,
  errorDetails,
  errorReason,
  InvalidArgumentError,
  KeyExistsError,
  KeyNotFoundError,
  NotANumberError,
  type OperationResult,
  UnavailableError,
  type Value,
  VersionMismatchError,
  WrongTypeError,
} from "../src";
import type { cachev1 } from "../src";
import { type RunningServer, startServer } from "./server";

const BATCH = "/cachet.cache.v1.CacheService/Batch";
const SESSION = "/cachet.cache.v1.CacheService/Session";

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

/** What a client sent: the calls started per method, and the operations of each Batch call in order. */
interface Sent {
  calls: Map<string, number>;
  batchSizes: number[];
  /** The operations of each SessionRequest written, in order: a lone one (`id`, `operation`) counts 1. */
  sessionSizes: number[];
  /** How many SessionRequests carried their operations packed (`operations`). */
  packedMessages: number;
  /** The ids of the Session answers (alone or packed), in the order they arrived. */
  answerIds: bigint[];
  /** How many SessionResponses carried them. */
  answerMessages: number;
}

function nothingSent(): Sent {
  return { calls: new Map(), batchSizes: [], sessionSizes: [], packedMessages: 0, answerIds: [], answerMessages: 0 };
}

/** Counts calls, Batch sizes and Session messages; delays sending the first `delayFirst` Batch calls by `delayMs`. */
function recorder(sent: Sent, delay: { first: number; ms: number } = { first: 0, ms: 0 }): Interceptor {
  let batches = 0;
  return (options, nextCall) => {
    const path = options.method_definition.path;
    sent.calls.set(path, (sent.calls.get(path) ?? 0) + 1);
    return new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        next(metadata, {
          onReceiveMessage(message: cachev1.SessionResponse, deliver: (message: unknown) => void) {
            if (path === SESSION) {
              sent.answerMessages++;
              if (message.answers.length > 0) sent.answerIds.push(...message.answers.map((answer) => answer.id));
              else sent.answerIds.push(message.id);
            }
            deliver(message);
          },
        });
      },
      sendMessage(message: cachev1.BatchRequest | cachev1.SessionRequest, next) {
        if (path === SESSION) {
          const { operations, operation } = message as cachev1.SessionRequest;
          sent.sessionSizes.push(operations.length + (operation === undefined ? 0 : 1));
          if (operations.length > 0) sent.packedMessages++;
        }
        if (path !== BATCH) return next(message);
        sent.batchSizes.push((message as cachev1.BatchRequest).operations.length);
        if (++batches <= delay.first) setTimeout(() => next(message), delay.ms);
        else next(message);
      },
    });
  };
}

function connect(delay?: { first: number; ms: number }, address = server.address) {
  const sent = nothingSent();
  const client = new CachetClient(address, {
    namespace: `ts-batch-${process.pid}-${++namespaces}`,
    channelOptions: { interceptors: [recorder(sent, delay)] },
  });
  clients.push(client);
  return { client, sent };
}

/** The Batch calls the server counted (AdminService.GetServiceStats, counted just after answering). */
async function serverBatchCalls(client: CachetClient, atLeast: bigint): Promise<bigint> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const stats = await client.admin.serviceStats();
    const calls = stats.methods.find((m) => m.method === BATCH)?.calls ?? 0n;
    if (calls >= atLeast || Date.now() > deadline) return calls;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function value<T>(result: OperationResult<T> | undefined): T {
  assert.ok(result !== undefined, "no result");
  if (result.status === "rejected") assert.fail(`the operation failed: ${result.reason}`);
  return result.value;
}

function failure(result: OperationResult<unknown> | undefined): CachetError {
  assert.ok(result?.status === "rejected", `expected a failed operation, got ${JSON.stringify(result, (_, v) => (typeof v === "bigint" ? String(v) : v))}`);
  return result.reason;
}

/** Asserts a batched operation's error is what the unary call rejected with. */
async function sameAsUnary(batched: CachetError, unary: Promise<unknown>) {
  const expected = await unary.then(
    () => assert.fail("the unary call succeeded"),
    (error: unknown) => error as CachetError,
  );
  assert.equal(batched.constructor, expected.constructor, `${batched} vs ${expected}`);
  assert.equal(batched.code, expected.code);
  assert.equal(batched.reason, expected.reason);
  assert.equal(batched.details, expected.details);
  assert.deepEqual(batched.errorMetadata, expected.errorMetadata);
  assert.equal(errorReason(batched), errorReason(expected));
  assert.equal(errorDetails(batched)?.domain, "cachet.dev");
}

test("batch: mixed operations, each answered with its value, in order", async () => {
  const { client, sent } = connect();
  const old = await client.set("user:1", "alice");
  await client.set("gone", "x");
  await client.hashSet("h", { a: "1" });
  await client.increment("n", 41);
  const results = await client
    .batch()
    .get("user:1")
    .get("missing")
    .set("user:2", "bob", { ttlMs: 60_000 })
    .set("user:1", "alice 2", { ifVersion: old })
    .delete(["gone", "never"])
    .increment("n")
    .incrementFloat("f", 0.5)
    .expire("user:2", 30_000)
    .expire("missing", 1000)
    .hashGet("h", ["a", "b"])
    .hashSet("h", { b: "2", c: "3" })
    .get("user:2")
    .execute();
  assert.equal(results.length, 12);
  assert.deepEqual(value(results[0]), { data: Buffer.from("alice"), version: old } satisfies Value);
  assert.equal(value(results[1]), undefined);
  const bobVersion = value(results[2]);
  assert.ok(typeof bobVersion === "bigint" && bobVersion > 0n);
  assert.ok(value(results[3]) > old);
  assert.equal(value(results[4]), 1);
  assert.equal(value(results[5]), 42n);
  assert.equal(value(results[6]), 0.5);
  assert.equal(value(results[7]), true);
  assert.equal(value(results[8]), false);
  assert.deepEqual(value(results[9]).map((v) => v?.toString()), ["1", undefined]);
  assert.equal(value(results[10]), 2);
  assert.deepEqual(value(results[11]), { data: Buffer.from("bob"), version: bobVersion });
  // What the unary calls read back.
  assert.equal((await client.get("user:1"))?.data.toString(), "alice 2");
  assert.equal(await client.get("gone"), undefined);
  const ttl = await client.ttl("user:2");
  assert.ok(ttl !== undefined && ttl <= 30_000 && ttl > 20_000, `${ttl}`);
  assert.deepEqual((await client.hashGet("h", ["a", "b", "c"])).map(String), ["1", "2", "3"]);
  assert.equal(sent.calls.get(BATCH), 1);
  assert.deepEqual(sent.batchSizes, [12]);
  assert.deepEqual(await client.batch().execute(), []); // nothing to send: no call
  assert.equal(sent.calls.get(BATCH), 1);
});

test("batch: a failed operation gets the unary call's error, the others still run", async () => {
  const { client } = connect();
  const first = await client.set("doc", "v1");
  await client.set("name", "bob");
  await client.hashSet("h", { a: "1" });
  const batch = client.batch<unknown[]>();
  batch
    .get("") // INVALID_ARGUMENT
    .set("tagged", "x", { tags: ["t"] } as never) // tags: refused in a batch
    .set("doc", "lost update", { ifVersion: first + 1n }) // VERSION_MISMATCH
    .set("doc", "again", { ifAbsent: true }) // KEY_EXISTS
    .set("absent", "x", { ifPresent: true }) // KEY_NOT_FOUND
    .increment("name") // NOT_A_NUMBER
    .get("h") // WRONG_TYPE
    .set("fine", "ok")
    .get("doc");
  const results = await batch.execute();
  const empty = failure(results[0]);
  assert.ok(empty instanceof InvalidArgumentError);
  assert.match(empty.details, /key/);
  await sameAsUnary(empty, client.get(""));
  const tagged = failure(results[1]);
  assert.ok(tagged instanceof InvalidArgumentError);
  assert.match(tagged.details, /tags/);
  const mismatch = failure(results[2]);
  assert.ok(mismatch instanceof VersionMismatchError);
  assert.equal(mismatch.errorMetadata["current_version"], String(first));
  await sameAsUnary(mismatch, client.set("doc", "lost update", { ifVersion: first + 1n }));
  assert.ok(failure(results[3]) instanceof KeyExistsError);
  await sameAsUnary(failure(results[3]), client.set("doc", "again", { ifAbsent: true }));
  assert.ok(failure(results[4]) instanceof KeyNotFoundError);
  await sameAsUnary(failure(results[4]), client.set("absent", "x", { ifPresent: true }));
  assert.ok(failure(results[5]) instanceof NotANumberError);
  await sameAsUnary(failure(results[5]), client.increment("name"));
  assert.ok(failure(results[6]) instanceof WrongTypeError);
  await sameAsUnary(failure(results[6]), client.get("h"));
  assert.ok((value(results[7]) as bigint) > 0n);
  assert.equal((value(results[8]) as Value).data.toString(), "v1");
  assert.equal(await client.get("tagged"), undefined);
  assert.equal((await client.get("fine"))?.data.toString(), "ok");
  await assert.rejects(batch.execute(), /executes once/);
});

test("batch: past maxBatch it splits into concurrent calls, keeping order and every value", async () => {
  const { client, sent } = connect();
  const count = 2500; // the server's max_batch is 1000: three calls each way
  const writes = client.batch<bigint[]>();
  for (let i = 0; i < count; i++) writes.set(`k${i}`, `value ${i}`, { ttlMs: 60_000 });
  const versions = (await writes.execute()).map(value);
  const reads = client.batch<(Value | undefined)[]>();
  for (let i = 0; i < count; i++) reads.get(`k${i}`);
  const values = await reads.execute();
  assert.equal(values.length, count);
  values.forEach((result, i) => {
    assert.deepEqual(value(result), { data: Buffer.from(`value ${i}`), version: versions[i] });
  });
  assert.deepEqual(sent.batchSizes, [1000, 1000, 500, 1000, 1000, 500]);
  // More than the server's max_batch in one call: the call itself is refused.
  const tooMany = new CachetClient(server.address, { namespace: client.namespace, maxBatch: 1001 });
  clients.push(tooMany);
  const big = tooMany.batch<(Value | undefined)[]>();
  for (let i = 0; i < 1001; i++) big.get(`k${i}`);
  await assert.rejects(big.execute(), InvalidArgumentError);
  assert.throws(() => new CachetClient(server.address, { maxBatch: 0 }), /maxBatch/);
});

test("batch: big values split at about a MiB per call, so the server never refuses a call its operations fit alone", async () => {
  const { client, sent } = connect();
  // 40 sets of 300 kB: 12 MB, more than the server's 8 MiB max_message_bytes in one call.
  const values = Array.from({ length: 40 }, (_, i) => Buffer.alloc(300_000, i));
  const before = await serverBatchCalls(client, 0n);
  const writes = client.batch<bigint[]>();
  values.forEach((v, i) => writes.set(`big:${i}`, v));
  const versions = (await writes.execute()).map(value);
  assert.deepEqual(sent.batchSizes, [...Array(13).fill(3), 1], "three of 300 kB per call");
  assert.equal(await serverBatchCalls(client, before + 14n), before + 14n);
  for (const [i, v] of values.entries()) {
    assert.deepEqual(await client.get(`big:${i}`), { data: v, version: versions[i] });
  }
  // A set of the server's largest value (1 MiB) is over a MiB: a call of its own, between two small ones.
  const largest = Buffer.alloc(1024 * 1024, 7);
  const mixed = await client.batch<bigint[]>().set("before", "1").set("largest", largest).set("after", "2").execute();
  mixed.forEach((result) => assert.ok(value(result) > 0n));
  assert.deepEqual(sent.batchSizes.slice(14), [1, 1, 1]);
  assert.equal((await client.get("before"))?.data.toString(), "1");
  assert.ok((await client.get("largest"))?.data.equals(largest));
  assert.equal((await client.get("after"))?.data.toString(), "2");
});

test("session: 300 concurrent operations from 30 tasks, each answered to its caller", async () => {
  const { client, sent } = connect();
  const session = client.session();
  let peak = 0;
  await Promise.all(
    Array.from({ length: 30 }, async (_, task) => {
      const keys = Array.from({ length: 10 }, (_, i) => `t${task}:${i}`);
      const versions = await Promise.all(keys.map((key) => session.set(key, `value of ${key}`, { ttlMs: 60_000 })));
      peak = Math.max(peak, session.outstanding);
      const [counted] = await Promise.all([session.increment(`count:${task}`, task + 1), session.hashSet(`h:${task}`, { task: String(task) })]);
      assert.equal(counted, BigInt(task + 1));
      const values = await Promise.all(keys.map((key) => session.get(key)));
      values.forEach((got, i) => assert.deepEqual(got, { data: Buffer.from(`value of ${keys[i]}`), version: versions[i] }));
      assert.deepEqual((await session.hashGet(`h:${task}`, ["task"])).map(String), [String(task)]);
    }),
  );
  // 250 at once, fired together: every answer matched by id to its own caller.
  const keys = Array.from({ length: 250 }, (_, i) => `t${i % 30}:${i % 10}`);
  const reads = keys.map((key) => session.get(key));
  peak = Math.max(peak, session.outstanding);
  const values = await Promise.all(reads);
  values.forEach((got, i) => assert.equal(got?.data.toString(), `value of ${keys[i]}`));
  assert.ok(peak >= 250, `at most ${peak} outstanding`);
  assert.equal(await session.delete(keys.slice(0, 10)), 10);
  assert.equal(await session.expire("t29:9", 10_000), true);
  await session.close();
  assert.equal(session.outstanding, 0);
  assert.equal(sent.calls.get(SESSION), 1, "one stream carried every operation");
  const operations = 30 * (10 + 2 + 10 + 1) + 250 + 2;
  assert.equal(sent.answerIds.length, operations, "one answer per operation");
  assert.equal(new Set(sent.answerIds).size, operations, "each operation its own id");
  assert.equal(sent.sessionSizes.reduce((a, b) => a + b, 0), operations, "every operation written once");
  // The 300 sets were made in one turn: packed 256, then the rest; the 250 reads together.
  assert.deepEqual(sent.sessionSizes.slice(0, 2), [256, 44]);
  assert.ok(sent.sessionSizes.includes(250), `${sent.sessionSizes}`);
  assert.ok(sent.sessionSizes.length < operations / 2, `${operations} operations in ${sent.sessionSizes.length} messages`);
  console.log(`session: ${operations} operations in ${sent.sessionSizes.length} messages, answered in ${sent.answerMessages}`);
  // How often the server answered an operation before one sent earlier (the client matches by id).
  const overtaking = sent.answerIds.filter((id, i) => i > 0 && id < sent.answerIds[i - 1]!).length;
  console.log(`session: ${overtaking} of ${sent.answerIds.length} answers arrived before an earlier operation's`);
  await assert.rejects(session.get("k"), CancelledError); // closed
  assert.equal((await client.get("t0:0")), undefined); // the session's delete is seen by unary calls
});

test("session: 500 sets, then 500 gets, of distinct keys made at once go out packed, each answered its own", async () => {
  const { client, sent } = connect();
  const session = client.session();
  const keys = Array.from({ length: 500 }, (_, i) => `distinct:${i}`);
  const versions = await Promise.all(keys.map((key, i) => session.set(key, `value ${i}`, { ttlMs: 60_000 })));
  assert.deepEqual(sent.sessionSizes, [256, 244], "500 operations made in one turn: two messages of at most 256");
  const values = await Promise.all(keys.map((key) => session.get(key)));
  values.forEach((got, i) => assert.deepEqual(got, { data: Buffer.from(`value ${i}`), version: versions[i] }));
  assert.deepEqual(sent.sessionSizes, [256, 244, 256, 244]);
  assert.equal(sent.packedMessages, 4);
  assert.equal(new Set(sent.answerIds).size, 1000, "each of the 1000 operations answered once");
  console.log(`session: 1000 operations in 4 messages, answered in ${sent.answerMessages}`);
  // A lone caller waits for nothing: each operation goes out at once, in a message of its own.
  for (let i = 0; i < 5; i++) assert.equal((await session.get(keys[i]!))?.data.toString(), `value ${i}`);
  assert.deepEqual(sent.sessionSizes.slice(4), [1, 1, 1, 1, 1]);
  assert.equal(sent.packedMessages, 4, "a lone operation is sent in `id` and `operation`");
  // Closing with operations made but not yet written: they go out before the half-close.
  const last = Promise.all([session.get(keys[499]!), session.increment("closing", 7)]);
  await session.close();
  const [got, counted] = await last;
  assert.equal(got?.data.toString(), "value 499");
  assert.equal(counted, 7n);
  assert.deepEqual(sent.sessionSizes.slice(9), [2]);
  assert.equal(sent.calls.get(SESSION), 1);
  // Never more than the client's maxBatch (the server's max_batch) in one message.
  const small = connect();
  const limited = new CachetClient(server.address, {
    namespace: client.namespace,
    maxBatch: 100,
    channelOptions: { interceptors: [recorder(small.sent)] },
  });
  clients.push(limited);
  const narrow = limited.session();
  const reads = await Promise.all(keys.slice(0, 250).map((key) => narrow.get(key)));
  reads.forEach((read, i) => assert.equal(read?.data.toString(), `value ${i}`));
  assert.deepEqual(small.sent.sessionSizes, [100, 100, 50]);
  await narrow.close();
});

test("session: big values are packed up to about a MiB per message, so the server never refuses a message its operations fit alone", async () => {
  const { client, sent } = connect();
  const session = client.session();
  // 30 values of 300 kB made at once: 9 MB, more than the server's 8 MiB max_message_bytes in one message.
  const values = Array.from({ length: 30 }, (_, i) => Buffer.alloc(300_000, i));
  const versions = await Promise.all(values.map((v, i) => session.set(`big:${i}`, v)));
  assert.deepEqual(sent.sessionSizes, Array(10).fill(3), "three of 300 kB per message");
  // Read back 10 at a time: the server packs answers up to its max_message_bytes (8 MiB),
  // past grpc-js's default receive limit (4 MiB).
  for (let start = 0; start < values.length; start += 10) {
    const read = await Promise.all(values.slice(start, start + 10).map((_, i) => session.get(`big:${start + i}`)));
    read.forEach((got, i) => assert.deepEqual(got, { data: values[start + i], version: versions[start + i] }));
  }
  // Two values near the server's max_value_bytes (1 MiB) never share a message; a small get still joins one.
  const near = Buffer.alloc(1_000_000, 7);
  await Promise.all([session.set("near:1", near), session.set("near:2", near), session.get("small")]);
  assert.deepEqual(sent.sessionSizes.slice(-2), [1, 2]);
  assert.ok((await client.get("near:2"))?.data.equals(near));
  await session.close();
});

test("session: a failed operation does not end the stream; a signal ends its operation only", async () => {
  const { client, sent } = connect();
  const session = client.session();
  await client.set("name", "bob");
  const [bad, kept, notNumber] = await Promise.allSettled([session.get(""), session.set("k", "v"), session.increment("name")]);
  assert.deepEqual(sent.sessionSizes, [3], "the three went out packed in one message");
  assert.ok(bad.status === "rejected" && bad.reason instanceof InvalidArgumentError, `${JSON.stringify(bad)}`);
  await sameAsUnary(bad.reason, client.get(""));
  assert.ok(kept.status === "fulfilled");
  assert.ok(notNumber.status === "rejected" && notNumber.reason instanceof NotANumberError);
  const controller = new AbortController();
  const aborted = session.get("k", { signal: controller.signal });
  const others = Promise.all([session.get("k"), session.set("k2", "v2")]);
  controller.abort(new Error("caller gave up"));
  const error = await aborted.catch((e: unknown) => e);
  assert.ok(error instanceof CancelledError && (error.cause as Error).message === "caller gave up", `${error}`);
  const [got] = await others;
  assert.equal(got?.data.toString(), "v");
  await assert.rejects(session.get("k", { signal: AbortSignal.abort() }), CancelledError);
  assert.equal((await session.get("k2"))?.data.toString(), "v2");
  assert.deepEqual(sent.sessionSizes, [3, 2, 1], "an operation aborted before its message was written is never sent");
  assert.equal(sent.calls.get(SESSION), 1);
  await session.close();
  // A session's own signal closes it: outstanding operations reject, later ones too.
  const closing = new AbortController();
  const aborting = client.session({ signal: closing.signal });
  const outstanding = aborting.get("k");
  closing.abort();
  await assert.rejects(outstanding, CancelledError);
  await assert.rejects(aborting.get("k"), CancelledError);
});

test("batcher: concurrent gets share Batch calls, counted by an interceptor and by the server", async () => {
  const { client, sent } = connect();
  const keys = Array.from({ length: 200 }, (_, i) => `user:${i}`);
  await client.setMany(keys.map((key) => ({ key, value: `name ${key}` })));
  const before = await serverBatchCalls(client, 0n);
  const batcher = client.batcher();
  const values = await Promise.all(keys.map((key) => batcher.get(key)));
  values.forEach((got, i) => assert.equal(got?.data.toString(), `name ${keys[i]}`));
  assert.deepEqual(sent.batchSizes, [200], "Promise.all of 200 gets is one Batch");
  // Independent tasks, each awaiting its own calls one after another.
  await Promise.all(
    Array.from({ length: 20 }, async (_, task) => {
      for (let i = 0; i < 10; i++) {
        const key = keys[(task * 10 + i) % keys.length]!;
        assert.equal((await batcher.get(key))?.data.toString(), `name ${key}`);
      }
    }),
  );
  const calls = sent.calls.get(BATCH) ?? 0;
  assert.ok(calls <= 1 + 20, `${calls} Batch calls for 400 gets`);
  assert.equal(sent.batchSizes.reduce((a, b) => a + b, 0), 400);
  assert.equal(await serverBatchCalls(client, before + BigInt(calls)), before + BigInt(calls));
  console.log(`batcher: 400 gets in ${calls} Batch calls (sizes ${sent.batchSizes.join(",")})`);
});

test("batcher: big values go about a MiB per Batch call, so the server never refuses one whole", async () => {
  const { client, sent } = connect();
  const batcher = client.batcher();
  // 40 sets of 300 kB in one turn of the event loop: as one Batch, 12 MB, over the server's 8 MiB.
  const values = Array.from({ length: 40 }, (_, i) => Buffer.alloc(300_000, i));
  const versions = await Promise.all(values.map((v, i) => batcher.set(`big:${i}`, v)));
  assert.deepEqual(sent.batchSizes, [...Array(13).fill(3), 1], "three of 300 kB per call");
  for (const i of [0, 20, 39]) {
    assert.deepEqual(await client.get(`big:${i}`), { data: values[i], version: versions[i] });
  }
});

test("batcher: a lone sequential caller sends one Batch per call, without waiting", async () => {
  const { client, sent } = connect();
  const batcher = client.batcher();
  await client.set("k", "v");
  const started = Date.now();
  for (let i = 0; i < 10; i++) {
    assert.equal((await batcher.get("k"))?.data.toString(), "v");
  }
  console.log(`batcher: 10 sequential gets in ${Date.now() - started} ms`);
  assert.deepEqual(sent.batchSizes, Array(10).fill(1));
});

test("batcher: at maxInFlight, later calls queue and go out together when one returns", async () => {
  for (const maxInFlight of [1, 4]) {
    // The first Batch call is held back 300 ms: it stays in flight while four waves of calls are made.
    const { client, sent } = connect({ first: 1, ms: 300 });
    const batcher = client.batcher({ maxInFlight });
    const calls = [batcher.increment("first")];
    for (let wave = 0; wave < 4; wave++) {
      await new Promise((resolve) => setImmediate(resolve)); // another turn of the event loop
      for (let i = 0; i < 5; i++) calls.push(batcher.increment(`wave${wave}`));
    }
    const counts = await Promise.all(calls);
    assert.equal(counts[0], 1n);
    for (let wave = 0; wave < 4; wave++) {
      assert.deepEqual(counts.slice(1 + wave * 5, 6 + wave * 5).map(Number).sort(), [1, 2, 3, 4, 5]);
    }
    // Below the limit each wave goes out at once; at it, the waves made meanwhile go together.
    assert.deepEqual(sent.batchSizes, maxInFlight === 1 ? [1, 20] : [1, 5, 5, 5, 5]);
  }
  assert.throws(() => connect().client.batcher({ maxInFlight: 0 }), /maxInFlight/);
});

test("batcher: each caller gets its own error", async () => {
  const { client, sent } = connect();
  const batcher = client.batcher();
  const first = await client.set("doc", "v1");
  await client.set("name", "bob");
  const results = await Promise.allSettled([
    batcher.get(""),
    batcher.set("doc", "x", { ifVersion: first + 1n }),
    batcher.increment("name"),
    batcher.get("doc"),
    batcher.hashSet("h", { a: "1" }),
    batcher.hashGet("h", ["a"]),
  ]);
  assert.deepEqual(sent.batchSizes, [6]);
  assert.ok(results[0].status === "rejected" && results[0].reason instanceof InvalidArgumentError);
  assert.ok(results[1].status === "rejected" && results[1].reason instanceof VersionMismatchError);
  await sameAsUnary(results[1].reason, client.set("doc", "x", { ifVersion: first + 1n }));
  assert.ok(results[2].status === "rejected" && results[2].reason instanceof NotANumberError);
  assert.ok(results[3].status === "fulfilled" && results[3].value?.version === first);
  assert.ok(results[4].status === "fulfilled" && results[4].value === 1);
  assert.ok(results[5].status === "fulfilled" && results[5].value[0]?.toString() === "1");
  const controller = new AbortController();
  const aborted = batcher.get("doc", { signal: controller.signal });
  controller.abort();
  await assert.rejects(aborted, CancelledError);
  assert.equal(sent.batchSizes.length, 1, "an aborted call still queued is never sent");
});

test("a frozen, then crashed, then stopped server: outstanding operations fail UNAVAILABLE, then it recovers", async () => {
  const crashing = await startServer({ CACHET_SHUTDOWN_GRACE: "PT1S" });
  try {
    // Short reconnect backoff, so the channel finds the restarted server quickly.
    const sent = nothingSent();
    const client = new CachetClient(crashing.address, {
      namespace: "ts-crash",
      channelOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 500, interceptors: [recorder(sent)] },
    });
    clients.push(client);
    const session = client.session();
    const batcher = client.batcher();
    await session.set("k", "v");
    crashing.pauseServer();
    const outstanding = Array.from({ length: 50 }, (_, i) => session.get(i % 2 ? "k" : `k${i}`, { timeoutMs: 30_000 }));
    const settled = outstanding.map((p) => p.then(() => "resolved", () => "rejected"));
    const timedOut = session.get("k", { timeoutMs: 300 });
    const batchedTimeout = batcher.get("k", { timeoutMs: 300 });
    await Promise.all([assert.rejects(timedOut, DeadlineExceededError), assert.rejects(batchedTimeout, DeadlineExceededError)]);
    assert.deepEqual(sent.sessionSizes, [1, 51], "the 51 operations made together went out in one message");
    const pending = await Promise.race([Promise.all(settled), new Promise((resolve) => setTimeout(() => resolve("pending"), 100))]);
    assert.equal(pending, "pending", "the frozen server answered");
    assert.equal(session.outstanding, 50);
    const killed = Date.now();
    await crashing.killServer();
    const errors = await Promise.all(outstanding.map((p) => p.then(() => assert.fail("answered"), (e: unknown) => e)));
    const failedAfterMs = Date.now() - killed;
    console.log(`session: 50 outstanding operations failed ${failedAfterMs} ms after the crash`);
    assert.ok(failedAfterMs < 10_000, `${failedAfterMs} ms`);
    for (const error of errors) assert.ok(error instanceof UnavailableError, `${error}`);
    assert.equal(session.outstanding, 0);
    // The call itself fails while the server is down: a Batch rejects as a unary call does.
    await assert.rejects(client.batch().get("k").execute(), UnavailableError);
    await assert.rejects(batcher.get("k"), UnavailableError);
    await assert.rejects(session.get("k"), UnavailableError); // a new stream, refused at once
    await crashing.restartServer();
    await new Promise<void>((resolve, reject) => client.cache.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())));
    // Redis kept the data; the session opens a new stream by itself.
    assert.equal((await session.get("k"))?.data.toString(), "v");
    assert.equal(value((await client.batch().get("k").execute())[0])?.data.toString(), "v");
    assert.equal((await batcher.get("k"))?.data.toString(), "v");
    // SIGTERM under a busy session: the server drains (1 s grace) and ends the stream.
    // Every operation is answered with its value or fails UNAVAILABLE; none hangs.
    const outcomes = new Map<string, number>();
    const callers = Array.from({ length: 10 }, async () => {
      for (let outcome = ""; outcome !== "unavailable"; ) {
        outcome = await session.get("k", { timeoutMs: 30_000 }).then(
          (got) => (got?.data.toString() === "v" ? "answered" : `wrong value ${got?.data}`),
          (e: unknown) => (e instanceof UnavailableError ? "unavailable" : `${e}`),
        );
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        if (outcome !== "answered" && outcome !== "unavailable") break;
      }
    });
    for (let waited = 0; (outcomes.get("answered") ?? 0) < 20 && waited < 10_000; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const terminated = Date.now();
    await crashing.killServer("SIGTERM");
    console.log(`session: the server drained and exited ${Date.now() - terminated} ms after SIGTERM`);
    await Promise.all(callers); // each caller stops at its first UNAVAILABLE
    console.log(`session: operations across a SIGTERM: ${JSON.stringify(Object.fromEntries(outcomes))}`);
    assert.deepEqual([...outcomes.keys()].sort(), ["answered", "unavailable"]);
    await crashing.restartServer();
    await new Promise<void>((resolve, reject) => client.cache.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())));
    assert.equal((await session.get("k"))?.data.toString(), "v");
    await session.close();
  } finally {
    await crashing.stop();
  }
});
