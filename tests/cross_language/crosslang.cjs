// The TypeScript client's side of tests/test_cross_language.py: one kind of call per run,
// through the built package (its directory is the first argument), answers printed as one
// JSON object per line (64-bit integers as strings, bytes as UTF-8 text).
//
//   node crosslang.cjs <client dir> <target> <namespace> get '{"key": "greeting"}'
//   node crosslang.cjs ... append '{"stream": "orders", "type": "order.created", "payload": "..."}'
//   node crosslang.cjs ... check '{"key": "api", "limit": 3, "periodSeconds": 60}'
"use strict";

const [clientDir, target, namespace, operation, params] = process.argv.slice(2);
const { CachetClient, Algorithm, target: limitTarget } = require(clientDir);
const TIMEOUT_MS = 10_000;

const operations = {
  async get(client, { key }) {
    const value = await client.get(key);
    return value === undefined
      ? { found: false }
      : { found: true, value: value.data.toString("utf8"), version: value.version };
  },

  async append(client, { stream, type, payload }) {
    return { id: await client.events.append(stream, { type, contentType: "application/json", payload }) };
  },

  async check(client, { key, limit, periodSeconds }) {
    const decision = await client.rateLimits.check(
      limitTarget.inline(key, { limit, periodMs: periodSeconds * 1000, algorithm: Algorithm.ALGORITHM_SLIDING_WINDOW_LOG }),
    );
    return { allowed: decision.allowed, remaining: decision.remaining, retryAfterSeconds: decision.retryAfterMs / 1000 };
  },
};

async function main() {
  const run = operations[operation];
  if (run === undefined) {
    throw new Error(`unknown operation ${operation}`);
  }
  const client = new CachetClient(target, { namespace, timeoutMs: TIMEOUT_MS });
  try {
    const answer = await run(client, JSON.parse(params ?? "{}"));
    console.log(JSON.stringify(answer, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`crosslang.cjs: ${error.stack ?? error}`);
  process.exit(1);
});
