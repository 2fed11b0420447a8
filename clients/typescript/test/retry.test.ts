// With Redis gone the server answers UNAVAILABLE: the channel's service config retries
// an idempotent get and an increment carrying a request_id (4 attempts each), and
// never a set; a Batch call as its operations' unary calls are (a set in it: once); a service config of the caller's own replaces the client's. Before that, a quota refusal shows as a RateLimitedError. The server counts every attempt it
// served (AdminService.GetServiceStats, kept in process memory).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CachetClient, RateLimitedError, UnavailableError } from "../src";
import { type RunningServer, startServer } from "./server";

let server: RunningServer;

before(async () => {
  server = await startServer({ CACHET_QUOTAS__MAX_HOLD_STREAMS: "1" });
});

after(async () => {
  await server?.stop();
});

/**
 * The attempts the server counted for a CacheService method, once it has counted at
 * least `expected` (it counts an attempt just after answering it) or 5 s passed.
 */
async function attempts(client: CachetClient, method: string, expected: bigint): Promise<bigint> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const stats = await client.admin.serviceStats();
    const calls = stats.methods.find((m) => m.method === `/cachet.cache.v1.CacheService/${method}`)?.calls ?? 0n;
    if (calls >= expected || Date.now() > deadline) return calls;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test("UNAVAILABLE retries only idempotent calls", async () => {
  const client = new CachetClient(server.address, { namespace: "ts-retry", timeoutMs: 20_000 });
  try {
    await client.get("k");
    // A namespace's quota (here one Hold stream) answers RESOURCE_EXHAUSTED with a
    // RetryInfo: a RateLimitedError with retryAfterMs, and not retried.
    const held = await client.locks.hold("a", 10_000);
    const quota = await client.locks.hold("b", 10_000).catch((e: unknown) => e);
    assert.ok(quota instanceof RateLimitedError && quota.reason === "QUOTA_EXCEEDED" && (quota.retryAfterMs ?? 0) > 0, `${quota}`);
    await held.release();
    await server.stopRedis();
    await assert.rejects(client.get("k"), UnavailableError);
    await assert.rejects(client.set("k", "v"), UnavailableError);
    await assert.rejects(client.increment("n"), UnavailableError);
    assert.equal(await attempts(client, "Get", 5n), 1n + 4n);
    assert.equal(await attempts(client, "Set", 1n), 1n);
    assert.equal(await attempts(client, "Increment", 4n), 4n); // its request_id makes it safe to retry
    const unretried = new CachetClient(server.address, { namespace: "ts-retry", retry: false });
    await assert.rejects(unretried.get("k"), UnavailableError);
    assert.equal(await attempts(client, "Get", 6n), 1n + 4n + 1n);
    // A service config of the caller's own replaces the client's: here two attempts, not four.
    const ownPolicy = JSON.stringify({
      methodConfig: [
        {
          name: [{ service: "cachet.cache.v1.CacheService", method: "Get" }],
          retryPolicy: { maxAttempts: 2, initialBackoff: "0.01s", maxBackoff: "0.01s", backoffMultiplier: 1, retryableStatusCodes: ["UNAVAILABLE"] },
        },
      ],
    });
    const own = new CachetClient(server.address, { namespace: "ts-retry", channelOptions: { "grpc.service_config": ownPolicy } });
    await assert.rejects(own.get("k"), UnavailableError);
    assert.equal(await attempts(client, "Get", 8n), 1n + 4n + 1n + 2n);
    own.close();
    await assert.rejects(client.batch().get("k").increment("n").delete("k").expire("k", 1000).hashGet("h", ["f"]).execute(), UnavailableError);
    assert.equal(await attempts(client, "Batch", 4n), 4n);
    await assert.rejects(client.batch().get("k").set("k", "v").execute(), UnavailableError);
    assert.equal(await attempts(client, "Batch", 5n), 4n + 1n);
    await assert.rejects(client.batcher().get("k"), UnavailableError);
    assert.equal(await attempts(client, "Batch", 9n), 4n + 1n + 4n);
    await assert.rejects(client.batcher().hashSet("h", { f: "v" }), UnavailableError);
    await assert.rejects(unretried.batch().get("k").execute(), UnavailableError);
    assert.equal(await attempts(client, "Batch", 11n), 4n + 1n + 4n + 1n + 1n);
    unretried.close();
  } finally {
    client.close();
  }
});
