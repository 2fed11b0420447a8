// The README's examples are the blocks between `// example: <name>` and `// end`
// below; a test checks that the README shows them as they are.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { CachetClient, LockHeldError, target, type Value, VersionMismatchError } from "../src";
import { AdminServiceService } from "../src/gen/cachet/admin/v1/admin";
import { CacheServiceService } from "../src/gen/cachet/cache/v1/cache";
import { EventBusServiceService } from "../src/gen/cachet/eventbus/v1/eventbus";
import { LockServiceService } from "../src/gen/cachet/lock/v1/lock";
import { RateLimitServiceService } from "../src/gen/cachet/ratelimit/v1/ratelimit";
import { RateLimitServiceService as EnvoyRateLimitService } from "../src/gen/envoy/service/ratelimit/v3/rls";
import { type RunningServer, startServer } from "./server";

let server: RunningServer;
let address = "";
const clients: CachetClient[] = [];

before(async () => {
  server = await startServer();
  address = server.address;
});

after(async () => {
  clients.forEach((c) => c.close());
  await server?.stop();
});

function connect(namespace: string): CachetClient {
  const client = new CachetClient(address, { namespace });
  clients.push(client);
  return client;
}

test("cache", async () => {
  const client = connect("example-cache");
  // example: cache
  const version = await client.set("user:1", "alice", { ttlMs: 60_000, tags: ["users"] });
  await assert.rejects(client.set("user:1", "bob", { ifVersion: version + 1n }), VersionMismatchError);
  const profile = await client.getOrSet("profile:1", async () => "computed once", { ttlMs: 60_000, tags: ["users"] });
  assert.equal(profile.toString(), "computed once"); // one caller of all processes computes a miss
  const [user, missing] = await client.getMany(["user:1", "user:2"]);
  assert.equal(user?.data.toString(), "alice");
  assert.equal(missing, undefined);
  assert.equal(await client.invalidateTags(["users"]), 2);
  // end
});

test("locks", async () => {
  const client = connect("example-locks");
  // example: locks
  const held = await client.locks.hold("reindex", 10_000); // renewed by the server until released
  await assert.rejects(client.locks.acquire("reindex", 1000), LockHeldError);
  await client.set("index", "v2", { fencingToken: held.fencingToken });
  assert.equal(held.signal.aborted, false); // aborts if the lock is ever lost
  await held.release();
  const lease = await client.locks.acquire("reindex", 1000, { waitMs: 5000 });
  assert.ok(lease.fencingToken > held.fencingToken);
  await client.locks.release(lease);
  // end
});

test("rate limits", async () => {
  const client = connect("example-ratelimits");
  // example: rate limits
  const login = target.inline("user:42:login", "2/minute");
  const decisions = [];
  for (let i = 0; i < 3; i++) decisions.push(await client.rateLimits.check(login));
  assert.deepEqual(decisions.map((d) => d.allowed), [true, true, false]);
  assert.ok(decisions[2]!.retryAfterMs > 0);
  const peek = await client.rateLimits.peek(login); // spends nothing
  assert.equal(peek.allowed, false);
  // end
});

test("events", async () => {
  const client = connect("example-events");
  // example: events
  const messages = await client.events.subscribe(["news"], ["alerts.*"]); // active once it resolves
  assert.equal(await client.events.publish("alerts.disk", { payload: "90% full" }), 1);
  for await (const message of messages) {
    assert.equal(message.event?.payload.toString(), "90% full");
    break; // leaving the loop ends the subscription
  }
  await client.events.createGroup("orders", "billing", { startId: "0", createStream: true });
  const id = await client.events.append("orders", { type: "order.created", payload: '{"id":7}' });
  for await (const delivery of client.events.consume("orders", "billing", "worker-1")) {
    assert.equal(delivery.event.id, id);
    await delivery.ack(); // at-least-once: unacked events are redelivered or claimed
    break;
  }
  // end
});

test("admin", async () => {
  const client = connect("example-admin");
  // example: admin
  await client.set("user:1", "alice");
  const info = await client.admin.inspectKey("user:1");
  assert.equal(info.found, true);
  assert.deepEqual(await client.admin.scanKeys("user:*"), ["user:1"]);
  const counted = await client.admin.flushNamespace("example-admin", { dryRun: true });
  assert.equal(await client.admin.flushNamespace("example-admin"), counted);
  // end
});

test("batch, session and batcher", async () => {
  const client = connect("example-batch");
  // example: batch
  const version = await client.set("user:1", "alice");
  const [user, missing, stale, logins] = await client
    .batch()
    .get("user:1")
    .get("user:2")
    .set("user:1", "bob", { ifVersion: version + 1n })
    .increment("logins")
    .execute(); // one Batch call; a result per operation, as Promise.allSettled reports them
  assert.equal(user.status === "fulfilled" && user.value?.data.toString(), "alice");
  assert.deepEqual(missing, { status: "fulfilled", value: undefined });
  assert.ok(stale.status === "rejected" && stale.reason instanceof VersionMismatchError); // the unary call's error
  assert.deepEqual(logins, { status: "fulfilled", value: 1n });
  const reads = client.batch<(Value | undefined)[]>(); // built in a loop: name the result type
  for (const key of ["user:1", "user:2"]) reads.get(key);
  assert.equal((await reads.execute()).length, 2);

  const session = client.session(); // one stream for many small calls, answered as they complete
  const [alice, count] = await Promise.all([session.get("user:1"), session.increment("logins")]);
  assert.equal(alice?.data.toString(), "alice");
  assert.equal(count, 2n);
  await session.close(); // half-closes, and waits for the outstanding answers

  const batcher = client.batcher(); // independent concurrent callers share Batch calls
  const users = await Promise.all(["user:1", "user:2", "user:1"].map((key) => batcher.get(key))); // one Batch
  assert.deepEqual(users.map((u) => u?.data.toString()), ["alice", undefined, "alice"]);
  // end
});

test("the README shows these examples", () => {
  // Every test file's `// example:` blocks (the TLS one lives in auth.test.ts).
  const testDir = join(__dirname, "..", "..", "test");
  const readme = readFileSync(join(__dirname, "..", "..", "README.md"), "utf8");
  const examples = readdirSync(testDir)
    .filter((name) => name.endsWith(".test.ts"))
    .flatMap((name) => [...readFileSync(join(testDir, name), "utf8").matchAll(/\n {2}\/\/ example: ([\w ]+)\n([\s\S]*?)\n {2}\/\/ end\n/g)]);
  assert.ok(examples.length >= 5, `found ${examples.length} examples`);
  for (const [, name, body] of examples) {
    const code = body!
      .split("\n")
      .map((line) => line.replace(/^ {2}/, ""))
      .join("\n");
    const shown = new RegExp(`<!-- example: ${name} -->\\n\`\`\`ts\\n([\\s\\S]*?)\\n\`\`\``).exec(readme);
    assert.ok(shown, `the README lacks the ${name} example`);
    assert.equal(shown[1], code, `the README's ${name} example differs from the test`);
  }
});

test("the README's coverage table has a row for every RPC", () => {
  const readme = readFileSync(join(__dirname, "..", "..", "README.md"), "utf8");
  const services = [AdminServiceService, CacheServiceService, EventBusServiceService, LockServiceService, RateLimitServiceService, EnvoyRateLimitService];
  let rpcs = 0;
  for (const service of services) {
    for (const method of Object.values(service)) {
      const [, fullName, name] = /^\/(.+)\/(\w+)$/.exec(method.path) ?? [];
      const label = fullName!.startsWith("envoy.") ? `envoy ${fullName!.split(".").pop()}` : fullName!.split(".").pop();
      assert.ok(readme.includes(`| ${label} | ${name} | `), `the README's table lacks ${label}/${name}`);
      rpcs++;
    }
  }
  assert.ok(rpcs > 90, `only ${rpcs} RPCs found`);
});
