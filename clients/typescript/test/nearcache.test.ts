// The near-cache against the live server: filled by reads, invalidated by the
// WatchInvalidations stream, serving nothing while unsynced, and never keeping a late
// answer that a newer write invalidated.
import assert from "node:assert/strict";
import { connect as tcpConnect, createServer, type Server, type Socket } from "node:net";
import { after, before, test } from "node:test";
import { credentials, Metadata } from "@grpc/grpc-js";
import { CachetClient, CachetError, NearCache, type NearCacheOptions, type NearCacheServer, type NearValue, nearCacheServer } from "../src";
import { CacheServiceClient, type GetResponse, SetCondition } from "../src/gen/cachet/cache/v1/cache";
import { type RunningServer, startServer } from "./server";

let server: RunningServer;
const closers: (() => unknown)[] = [];
let namespaces = 0;

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const close of closers.reverse()) {
    await close();
  }
  await server?.stop();
});

/** A CacheService stub on its own channel to address, and its calls in namespace. */
function connectTo(address: string, namespace: string): { stub: CacheServiceClient; server: NearCacheServer; metadata: Metadata } {
  const stub = new CacheServiceClient(address, credentials.createInsecure());
  closers.push(() => stub.close());
  const metadata = new Metadata();
  metadata.set("cachet-namespace", namespace);
  return { stub, server: nearCacheServer(stub, { metadata }), metadata };
}

function freshNamespace(): string {
  return `tsnear-${process.pid}-${Date.now() % 1_000_000}-${++namespaces}`;
}

/** A reader (with its near-cache following the stream, synced) and a writer on another channel. */
async function setUp(options: NearCacheOptions = {}, readerAddress = server.address) {
  const namespace = freshNamespace();
  const reader = connectTo(readerAddress, namespace);
  const writer = connectTo(server.address, namespace);
  const near = new NearCache(reader.server, options).start();
  closers.push(() => near.close());
  await within(15_000, near.waitSynced(), "never synced");
  const write = (key: string, value: string, ttlMs?: number) =>
    new Promise<void>((resolve, reject) =>
      writer.stub.set(
        {
          key,
          value: Buffer.from(value),
          ttl: ttlMs === undefined ? undefined : { seconds: BigInt(Math.floor(ttlMs / 1000)), nanos: (ttlMs % 1000) * 1e6 },
          keepTtl: false,
          condition: SetCondition.SET_CONDITION_UNSPECIFIED,
          ifVersion: undefined,
          returnPrevious: false,
          tags: [],
          fencingToken: undefined,
          recomputeTime: undefined,
        },
        writer.metadata.clone(),
        (error) => (error ? reject(error) : resolve()),
      ),
    );
  /** Writes, and waits until the near-cache has seen the write's invalidation (so it cannot drop a later fill). */
  const writeSeen = async (key: string, value: string, ttlMs?: number) => {
    const before = near.stats().invalidations;
    await write(key, value, ttlMs);
    await eventually(() => near.stats().invalidations > before, "the write's invalidation arrives");
  };
  return { near, reader, writer, write, writeSeen };
}

async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function eventually(condition: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`not reached within ${ms} ms: ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const text = (value: NearValue | undefined) => (value === undefined ? "<absent>" : value.data.toString());

test("a write by another client invalidates the near-cached key", async () => {
  const { near, write, writeSeen } = await setUp();
  await writeSeen("user:1", "v1");
  assert.equal(text(await near.get("user:1")), "v1");
  assert.equal(text(await near.get("user:1")), "v1");
  assert.deepEqual(
    { ...near.stats(), invalidations: 0 },
    { hits: 1, misses: 1, invalidations: 0, flushes: 0, evictions: 0, entries: 1, bytes: 2, synced: true },
  );
  await write("user:1", "v2");
  await eventually(() => near.stats().entries === 0, "the write invalidates the near-cached key");
  assert.equal(text(await near.get("user:1")), "v2");
  assert.ok(near.stats().invalidations >= 2);
  assert.equal(near.stats().misses, 2);
});

test("getMany fills and serves, in order, with repeats and absent keys", async () => {
  const { near, write, writeSeen } = await setUp();
  await writeSeen("a", "1");
  await writeSeen("b", "2");
  for (let round = 0; round < 2; round++) {
    const values = await near.getMany(["a", "absent", "b", "a"]);
    assert.deepEqual(values.map(text), ["1", "<absent>", "2", "1"], `round ${round}`);
  }
  // Round 1: three distinct misses; round 2: a and b served (a twice), absent asked again.
  const stats = near.stats();
  assert.deepEqual([stats.entries, stats.hits, stats.misses], [2, 3, 4]);
  await write("b", "3");
  await eventually(() => near.stats().entries === 1, "b invalidated");
  assert.deepEqual((await near.getMany(["b"])).map(text), ["3"]);
});

test("a late answer never overwrites a newer invalidation", async () => {
  // The classic race, forced: a read starts, another client writes, the invalidation
  // arrives, then the old read's answer arrives. It must not be cached.
  const { near, reader, write, writeSeen } = await setUp();
  await writeSeen("k", "old");
  const ticket = near.begin();
  const stale: GetResponse = await reader.server.get({ key: "k", includeTtl: true, earlyRefreshBeta: 0 });
  assert.equal(stale.value.toString(), "old");
  const invalidations = near.stats().invalidations;
  await write("k", "new");
  await eventually(() => near.stats().invalidations > invalidations, "the invalidation arrives");
  assert.equal(near.fill(ticket, "k", { data: stale.value, version: stale.version }, 60_000), false);
  assert.equal(near.lookup("k"), undefined, "the stale value is served");
  assert.equal(text(await near.get("k")), "new");
  assert.equal(text(near.lookup("k")), "new", "the fresh answer is near-cached");
});

test("nothing is served before synced, nor after a flush until synced again", () => {
  const near = new NearCache();
  const value = { data: Buffer.from("v"), version: 1n };
  assert.equal(near.fill(near.begin(), "k", value, 60_000), false, "filled before synced");
  near.apply({ synced: true });
  const before = near.begin();
  assert.equal(near.fill(near.begin(), "k", value, 60_000), true);
  near.apply({ flushAll: true });
  assert.equal(near.lookup("k"), undefined, "served after flush_all");
  assert.equal(near.synced, false);
  near.apply({ synced: true });
  assert.equal(near.fill(before, "k", value, 60_000), false, "a read begun before the flush was kept");
  assert.equal(near.lookup("k"), undefined, "served a value from before the flush");
  const stats = near.stats();
  assert.deepEqual([stats.flushes, stats.misses, stats.hits], [1, 2, 0]);
});

test("a killed Redis tracking connection flushes the near-cache, which resyncs", async () => {
  const { near, write, writeSeen } = await setUp();
  await writeSeen("k", "v1");
  assert.equal(text(await near.get("k")), "v1");
  assert.equal(near.stats().entries, 1);
  const ticket = near.begin();
  const flushes = near.stats().flushes;
  assert.ok((await killRedisClients(server.redisPort, "cachet-invalidations")) > 0, "no cachet-invalidations connection");
  await eventually(() => near.stats().flushes > flushes, "flush_all after the lost tracking connection");
  await within(15_000, near.waitSynced(), "synced again");
  assert.equal(near.fill(ticket, "k", { data: Buffer.from("v1"), version: 1n }, 60_000), false, "a read from before the gap was kept");
  assert.equal(text(await near.get("k")), "v1");
  await write("k", "v2");
  await eventually(() => near.stats().entries === 0, "invalidation after the resync");
});

test("a lost stream flushes the near-cache, which reconnects and resyncs", async () => {
  const proxy = await startProxy(server.address);
  closers.push(() => proxy.close());
  const { near, write, writeSeen } = await setUp({ maxBackoffMs: 200 }, proxy.address);
  await writeSeen("k", "v1");
  assert.equal(text(await near.get("k")), "v1");
  assert.equal(near.stats().entries, 1);

  proxy.refuse(true); // the stream breaks and cannot come back for now
  await eventually(() => !near.synced, "the lost stream flushes the near-cache");
  assert.equal(near.stats().entries, 0);
  assert.ok(near.stats().flushes >= 1);
  await write("k", "v2"); // a write the lost stream cannot report
  // Several reopen attempts fail meanwhile (maxBackoffMs 200); none may serve.
  for (const deadline = Date.now() + 500; Date.now() < deadline; ) {
    assert.equal(near.lookup("k"), undefined, "served while the stream is lost");
    assert.equal(near.synced, false);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  proxy.refuse(false);
  await within(15_000, near.waitSynced(), "never resynced");
  let value: NearValue | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      value = await near.get("k");
      break;
    } catch (error) {
      if (attempt > 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  assert.equal(text(value), "v2");
});

test("bounded by entries and bytes, least recently used first", () => {
  const near = new NearCache(undefined, { maxEntries: 3, maxBytes: 10 });
  near.markSynced();
  const small = { data: Buffer.from("x"), version: 1n };
  for (const key of ["a", "b", "c"]) {
    near.fill(near.begin(), key, small, undefined);
  }
  near.lookup("a"); // a is now the most recently used: b goes first
  near.fill(near.begin(), "d", small, undefined);
  assert.equal(cachedOf(near, "a", "b", "c", "d"), "a,c,d", "LRU by entries");
  near.fill(near.begin(), "big", { data: Buffer.from("y".repeat(9)), version: 1n }, undefined);
  assert.ok(near.stats().bytes <= 10);
  assert.equal(near.stats().entries, 2);
  assert.equal(cachedOf(near, "big"), "big", "the newest entry was evicted");
  assert.equal(near.fill(near.begin(), "huge", { data: Buffer.from("h".repeat(11)), version: 1n }, undefined), false);
  assert.equal(near.stats().evictions, 3);
});

function cachedOf(near: NearCache, ...keys: string[]): string {
  return keys.filter((key) => near.lookup(key) !== undefined).join(",");
}

test("an entry never outlives the server's TTL nor maxTtlMs", async () => {
  let now = performance.now();
  const clock = () => now;
  const { near, writeSeen } = await setUp({ maxTtlMs: 3_600_000, clock });
  await writeSeen("short", "s", 30_000);
  await writeSeen("long", "l", 3_600_000);
  await near.getMany(["short", "long"]);
  now += 30_000; // the server's copy of "short" expires now (its real clock lags)
  assert.equal(cachedOf(near, "short", "long"), "long");

  const capped = new NearCache(undefined, { maxTtlMs: 5_000, clock });
  capped.markSynced();
  capped.fill(capped.begin(), "untimed", { data: Buffer.from("u"), version: 1n }, undefined);
  capped.fill(capped.begin(), "timed", { data: Buffer.from("t"), version: 1n }, 3_600_000);
  now += 5_000;
  assert.equal(cachedOf(capped, "untimed", "timed"), "");
  assert.equal(capped.fill(capped.begin(), "expired", { data: Buffer.from("e"), version: 1n }, 0), false);
});

/** Closes the test Redis's connections named name; resolves to how many. */
async function killRedisClients(port: number, name: string): Promise<number> {
  const redis = await redisConnection(port);
  try {
    const list = await redis.call("CLIENT", "LIST");
    let killed = 0;
    for (const line of list.trim().split("\n")) {
      const fields = new Map(line.split(" ").map((field) => field.split("=", 2) as [string, string]));
      if (fields.get("name") === name) {
        await redis.call("CLIENT", "KILL", "ID", fields.get("id") ?? "");
        killed++;
      }
    }
    return killed;
  } finally {
    redis.close();
  }
}

/** A minimal RESP connection: one command at a time, simple, integer or bulk string replies. */
async function redisConnection(port: number) {
  const socket = await new Promise<Socket>((resolve, reject) => {
    const s = tcpConnect(port, "127.0.0.1", () => resolve(s));
    s.once("error", reject);
  });
  let buffered = Buffer.alloc(0);
  let waiting: (() => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    waiting?.();
  });
  const reply = (): string | undefined => {
    const end = buffered.indexOf("\r\n");
    if (end < 0) return undefined;
    const line = buffered.subarray(0, end).toString();
    if (line[0] === "+" || line[0] === ":") {
      buffered = buffered.subarray(end + 2);
      return line.slice(1);
    }
    if (line[0] === "$") {
      const size = Number(line.slice(1));
      if (buffered.length < end + 2 + size + 2) return undefined;
      const body = buffered.subarray(end + 2, end + 2 + size).toString();
      buffered = buffered.subarray(end + 2 + size + 2);
      return body;
    }
    throw new Error(`redis: ${line}`);
  };
  return {
    async call(...args: string[]): Promise<string> {
      socket.write(`*${args.length}\r\n${args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join("")}`);
      for (;;) {
        const answer = reply();
        if (answer !== undefined) return answer;
        await within(10_000, new Promise<void>((resolve) => (waiting = resolve)), "redis reply");
      }
    },
    close: () => socket.destroy(),
  };
}

/** Forwards loopback TCP to target; refuse(true) cuts every connection and turns new ones away until refuse(false). */
async function startProxy(target: string) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const open = new Set<Socket>();
  let refusing = false;
  const listener: Server = createServer((downstream) => {
    if (refusing) {
      downstream.destroy();
      return;
    }
    const upstream = tcpConnect(port, host);
    for (const [from, to] of [
      [downstream, upstream],
      [upstream, downstream],
    ] as const) {
      open.add(from);
      from.pipe(to);
      from.on("error", () => to.destroy());
      from.on("close", () => {
        open.delete(from);
        to.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const { port: listening } = listener.address() as { port: number };
  const cut = () => open.forEach((socket) => socket.destroy());
  return {
    address: `127.0.0.1:${listening}`,
    refuse(value: boolean) {
      refusing = value;
      if (value) cut();
    },
    close: () => {
      cut();
      return new Promise<void>((resolve) => listener.close(() => resolve()));
    },
  };
}

test("CachetClient.enableNearCache serves get and getMany locally, invalidated by other clients", async () => {
  const namespace = freshNamespace();
  const client = new CachetClient(server.address, { namespace });
  const writer = new CachetClient(server.address, { namespace });
  closers.push(() => writer.close());
  try {
    const near = client.enableNearCache({ maxEntries: 100 });
    assert.throws(() => client.enableNearCache(), /already enabled/);
    await within(15_000, near.waitSynced(), "never synced");
    await writer.set("user:1", Buffer.from("v1"));
    await within(15_000, until(() => near.stats().invalidations >= 1), "the write's invalidation never came");
    for (let i = 0; i < 3; i++) {
      assert.equal((await client.get("user:1"))?.data.toString(), "v1");
    }
    const many = await client.getMany(["user:1", "absent"]);
    assert.equal(many[0]?.data.toString(), "v1");
    assert.equal(many[1], undefined);
    assert.ok(near.stats().hits >= 3, JSON.stringify(near.stats(), (_, v) => (typeof v === "bigint" ? String(v) : v)));
    const seen = near.stats().invalidations;
    await writer.set("user:1", Buffer.from("v2"));
    await within(15_000, until(() => near.stats().invalidations > seen), "the second write's invalidation never came");
    assert.equal((await client.get("user:1"))?.data.toString(), "v2");
    await assert.rejects(client.get(""), CachetError);
  } finally {
    client.close();
  }
  assert.equal(client.nearCache, undefined);
});

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
