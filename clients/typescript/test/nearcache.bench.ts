// Near-cache benchmark (TypeScript client) against a live server it starts itself: hit
// latency and throughput against unary Get, and the invalidation delay from a write's
// acknowledgement to its receipt on another channel's stream. Prints JSON.
//
//   npm run build && node dist/test/nearcache.bench.js [hits] [gets] [writes]
import { cpus, loadavg } from "node:os";
import { credentials, Metadata } from "@grpc/grpc-js";
import { NearCache, nearCacheServer } from "../src";
import { CacheServiceClient, SetCondition, type WatchInvalidationsResponse } from "../src/gen/cachet/cache/v1/cache";
import { startServer } from "./server";

const [hits, gets, writes] = [Number(process.argv[2] ?? 200_000), Number(process.argv[3] ?? 2_000), Number(process.argv[4] ?? 500)];

function percentile(values: number[], q: number): number {
  const ordered = [...values].sort((a, b) => a - b);
  return ordered[Math.min(ordered.length - 1, Math.floor(q * ordered.length))] ?? NaN;
}

async function main(): Promise<void> {
  const server = await startServer();
  const metadata = new Metadata();
  metadata.set("cachet-namespace", "tsbench");
  const readerStub = new CacheServiceClient(server.address, credentials.createInsecure());
  const writerStub = new CacheServiceClient(server.address, credentials.createInsecure());
  const reader = nearCacheServer(readerStub, { metadata });
  const set = (key: string, value: string) =>
    new Promise<void>((resolve, reject) =>
      writerStub.set(
        {
          key,
          value: Buffer.from(value),
          ttl: undefined,
          keepTtl: false,
          condition: SetCondition.SET_CONDITION_UNSPECIFIED,
          ifVersion: undefined,
          returnPrevious: false,
          tags: [],
          fencingToken: undefined,
          recomputeTime: undefined,
        },
        metadata.clone(),
        (error) => (error ? reject(error) : resolve()),
      ),
    );
  const near = new NearCache(reader).start();
  try {
    await near.waitSynced();
    await set("hot", "x".repeat(100));
    await new Promise((resolve) => setTimeout(resolve, 100)); // the write's own invalidation

    // Unary Get, one at a time.
    const getLatencies: number[] = [];
    for (let i = 0; i < gets; i++) {
      const started = performance.now();
      await reader.get({ key: "hot", includeTtl: false, earlyRefreshBeta: 0 });
      getLatencies.push(performance.now() - started);
    }
    const getTotalMs = getLatencies.reduce((a, b) => a + b, 0);

    // Near-cache hits through the read path, in batches of 1,000.
    await near.get("hot");
    const batchMs: number[] = [];
    for (let i = 0; i < hits / 1000; i++) {
      const started = performance.now();
      for (let j = 0; j < 1000; j++) {
        await near.get("hot");
      }
      batchMs.push((performance.now() - started) / 1000);
    }
    const syncLookupStarted = performance.now();
    for (let i = 0; i < hits; i++) {
      near.lookup("hot");
    }
    const syncLookupMs = (performance.now() - syncLookupStarted) / hits;
    const stats = near.stats();
    if (stats.misses > 1) {
      throw new Error(`hits were misses: ${JSON.stringify(stats)}`);
    }

    // Invalidation delay: write acknowledged -> key received on another channel's stream.
    const watcher = new AbortController();
    const stream = reader.watch({ prefixes: ["d"] }, watcher.signal)[Symbol.asyncIterator]();
    const first = (await stream.next()).value as WatchInvalidationsResponse;
    if (first.synced === undefined) {
      throw new Error("the stream did not start with synced");
    }
    const delays: number[] = [];
    for (let i = 0; i < writes; i++) {
      await set(`d${i}`, "1");
      const acked = performance.now();
      for (;;) {
        const event = (await stream.next()).value as WatchInvalidationsResponse;
        if (event.keys?.keys.includes(`d${i}`)) {
          delays.push(Math.max(0, performance.now() - acked));
          break;
        }
      }
    }
    watcher.abort();
    await stream.return?.();

    const getPerS = gets / (getTotalMs / 1000);
    const hitPerS = 1000 / (batchMs.reduce((a, b) => a + b, 0) / batchMs.length);
    console.log(
      JSON.stringify(
        {
          unary_get_c1_p50_us: percentile(getLatencies, 0.5) * 1000,
          unary_get_c1_per_s: getPerS,
          near_hit_p50_us: percentile(batchMs, 0.5) * 1000,
          near_hit_per_s: hitPerS,
          near_hits_vs_unary_get: hitPerS / getPerS,
          near_lookup_sync_us: syncLookupMs * 1000,
          invalidation_delay_p50_ms: percentile(delays, 0.5),
          invalidation_delay_p99_ms: percentile(delays, 0.99),
          invalidation_delay_max_ms: Math.max(...delays),
          machine: { cpus: cpus().length, load_1m: loadavg()[0] },
        },
        null,
        2,
      ),
    );
  } finally {
    await near.close();
    readerStub.close();
    writerStub.close();
    await server.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
