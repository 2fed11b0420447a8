// With Redis gone the server answers UNAVAILABLE: the channel's service config retries
// an idempotent get and an increment carrying a request_id (4 attempts each), and
// never a set. The server counts every attempt it
// served (AdminService.GetServiceStats, kept in process memory).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CachetClient, UnavailableError } from "../src";
import { type RunningServer, startServer } from "./server";

let server: RunningServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

async function attempts(client: CachetClient, method: string): Promise<bigint> {
  const stats = await client.admin.serviceStats();
  return stats.methods.find((m) => m.method === `/cachet.cache.v1.CacheService/${method}`)?.calls ?? 0n;
}

test("UNAVAILABLE retries only idempotent calls", async () => {
  const client = new CachetClient(server.address, { namespace: "ts-retry", timeoutMs: 20_000 });
  try {
    await client.get("k");
    await server.stopRedis();
    await assert.rejects(client.get("k"), UnavailableError);
    await assert.rejects(client.set("k", "v"), UnavailableError);
    await assert.rejects(client.increment("n"), UnavailableError);
    assert.equal(await attempts(client, "Get"), 1n + 4n);
    assert.equal(await attempts(client, "Set"), 1n);
    assert.equal(await attempts(client, "Increment"), 4n); // its request_id makes it safe to retry
    const unretried = new CachetClient(server.address, { namespace: "ts-retry", retry: false });
    await assert.rejects(unretried.get("k"), UnavailableError);
    unretried.close();
    assert.equal(await attempts(client, "Get"), 1n + 4n + 1n);
  } finally {
    client.close();
  }
});
