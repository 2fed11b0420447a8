// Batch, Session and Batcher benchmark (TypeScript client) against a live server it
// starts itself: gets of a 100-byte value one at a time (c1) and with 32 concurrent
// callers (c32), through unary Get, a Session and a Batcher, and as Batch calls of 100.
// Prints JSON: calls per second, and per-call p50 / p99 in milliseconds.
//
//   npm run build && node dist/test/batch.bench.js [gets]
import { cpus, loadavg } from "node:os";
import { CachetClient, type Value } from "../src";
import { startServer } from "./server";

const gets = Number(process.argv[2] ?? 4000);

function percentile(values: number[], q: number): number {
  const ordered = [...values].sort((a, b) => a - b);
  return ordered[Math.min(ordered.length - 1, Math.floor(q * ordered.length))] ?? NaN;
}

/** `total` calls of `get` by `concurrency` callers, each awaiting its own one after another. */
async function run(get: () => Promise<unknown>, total: number, concurrency: number) {
  const latencies: number[] = [];
  let left = total;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const begun = performance.now();
        await get();
        latencies.push(performance.now() - begun);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { calls_per_s: Math.round(total / seconds), p50_ms: +percentile(latencies, 0.5).toFixed(3), p99_ms: +percentile(latencies, 0.99).toFixed(3) };
}

async function main(): Promise<void> {
  const server = await startServer();
  const client = new CachetClient(server.address, { namespace: "tsbench-batch" });
  try {
    await client.set("hot", "x".repeat(100));
    const session = client.session();
    const batcher = client.batcher();
    const get = {
      unary: () => client.get("hot"),
      session: () => session.get("hot"),
      batcher: () => batcher.get("hot"),
    };
    for (const call of Object.values(get)) await run(call, 200, 8); // warm up
    const rows: Record<string, unknown> = {};
    for (const concurrency of [1, 32]) {
      for (const [name, call] of Object.entries(get)) {
        rows[`${name}_get_c${concurrency}`] = await run(call, concurrency === 1 ? gets / 4 : gets, concurrency);
      }
    }
    const batchOf100 = async () => {
      const batch = client.batch<(Value | undefined)[]>();
      for (let i = 0; i < 100; i++) batch.get("hot");
      await batch.execute();
    };
    const batches = await run(batchOf100, gets / 100, 1);
    rows["batch100_c1"] = { ...batches, keys_per_s: batches.calls_per_s * 100 };
    await session.close();
    console.log(
      JSON.stringify(
        {
          machine: { cpus: cpus().length, loadavg_1m: +loadavg()[0]!.toFixed(2), node: process.version, placement: "none (shared machine)" },
          gets,
          rows,
        },
        null,
        2,
      ),
    );
  } finally {
    client.close();
    await server.stop();
  }
}

void main();
