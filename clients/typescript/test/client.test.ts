import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CachetClient, cachev1, errorDetails, errorReason, isServiceError, status } from "../src";
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

/** A client in a namespace no other test uses. */
function connect(): CachetClient {
  const client = new CachetClient(server.address, { namespace: `ts-${process.pid}-${Date.now()}-${++namespaces}` });
  clients.push(client);
  return client;
}

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
  assert.equal(await client.delete("user:1", "never-written"), 1);
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
