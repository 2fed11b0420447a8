// The TypeScript client's side of tests/test_cross_language.py: one kind of call per run,
// through the built package (its directory is the first argument), answers printed as one
// JSON object per line (64-bit integers as strings, bytes as UTF-8 text).
//
//   node crosslang.cjs <client dir> <target> <namespace> get '{"key": "greeting"}'
//   node crosslang.cjs ... append '{"stream": "orders", "type": "order.created", "payload": "..."}'
//   node crosslang.cjs ... check '{"key": "api", "limit": 3, "periodSeconds": 60}'
"use strict";

const [clientDir, target, namespace, operation, params] = process.argv.slice(2);
const { CachetClient, Metadata, eventbusv1, ratelimitv1 } = loadClient(clientDir);
const TIMEOUT_MS = 10_000;

function loadClient(dir) {
  const client = require(dir);
  // Metadata comes from the same @grpc/grpc-js the client is built on.
  const { Metadata } = require(require.resolve("@grpc/grpc-js", { paths: [dir] }));
  return { ...client, Metadata };
}

/** Calls a generated callback-style unary method with a deadline. */
function unary(stub, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + TIMEOUT_MS);
    stub[method](request, new Metadata(), { deadline }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

const operations = {
  async get(client, { key }) {
    const value = await client.get(key);
    return value === undefined
      ? { found: false }
      : { found: true, value: value.data.toString("utf8"), version: value.version };
  },

  async append(client, { stream, type, payload }) {
    const events = client.stub(eventbusv1.EventBusServiceClient);
    const request = eventbusv1.AppendRequest.fromPartial({
      stream,
      event: { type, contentType: "application/json", payload: Buffer.from(payload, "utf8") },
    });
    return { id: (await unary(events, "append", request)).id };
  },

  async check(client, { key, limit, periodSeconds }) {
    const limits = client.stub(ratelimitv1.RateLimitServiceClient);
    const request = ratelimitv1.CheckRequest.fromPartial({
      target: {
        inlineLimit: {
          key,
          limit: {
            algorithm: ratelimitv1.Algorithm.ALGORITHM_SLIDING_WINDOW_LOG,
            limit: BigInt(limit),
            period: { seconds: BigInt(periodSeconds), nanos: 0 },
          },
        },
      },
      hits: 1n,
    });
    const { result } = await unary(limits, "check", request);
    return {
      allowed: result.allowed,
      remaining: result.remaining,
      retryAfterSeconds: result.retryAfter ? Number(result.retryAfter.seconds) + result.retryAfter.nanos / 1e9 : 0,
    };
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
