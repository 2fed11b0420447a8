// Answers past gRPC's default 4 MiB receive limit reach the client: the server sends up
// to its limits.max_message_bytes (8 MiB by default), and the channel takes whatever it
// sends, through the wrappers and the generated stubs alike, while `channelOptions` can
// still cap it. Each test writes six values of 1 MiB (the server's largest value, one
// set each) and reads them back in one GetMany: a 6 MiB answer.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";
import { CachetClient, type CachetClientOptions, ResourceExhaustedError } from "../src";
import { type RunningServer, startServer } from "./server";

const MIB = 1024 * 1024;
const GRPC_DEFAULT_RECEIVE_LIMIT = 4 * MIB;

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

function connect(options: CachetClientOptions = {}): CachetClient {
  namespaces += 1;
  const client = new CachetClient(server.address, { namespace: `ts-receive-${process.pid}-${namespaces}`, ...options });
  clients.push(client);
  return client;
}

/** Six distinct 1 MiB values, each written with its own set. */
async function setSixMebibytes(client: CachetClient): Promise<Map<string, Buffer>> {
  const values = new Map(Array.from({ length: 6 }, (_, n) => [`big:${n}`, randomBytes(MIB)] as const));
  for (const [key, value] of values) {
    await client.set(key, value, { ttlMs: 60_000 });
  }
  return values;
}

test("a GetMany answer of 6 MiB arrives intact", async () => {
  const client = connect();
  const values = await setSixMebibytes(client);
  const found = await client.getMany([...values.keys()]);
  assert.equal(found.length, values.size);
  [...values.values()].forEach((value, n) => assert.ok(found[n]?.data.equals(value), `big:${n} came back changed`));
});

test("the generated stubs on the client's channel take a 6 MiB answer too", async () => {
  const client = connect({ retry: false });
  const values = await setSixMebibytes(client);
  const reply = await new Promise<{ entries: { value: Buffer }[] }>((resolve, reject) =>
    client.cache.getMany({ keys: [...values.keys()], includeTtl: false }, (error, answer) => (error ? reject(error) : resolve(answer))),
  );
  assert.ok(reply.entries.reduce((total, entry) => total + entry.value.length, 0) > GRPC_DEFAULT_RECEIVE_LIMIT);
  [...values.values()].forEach((value, n) => assert.ok(reply.entries[n]?.value.equals(value), `big:${n} came back changed`));
});

test("channelOptions can cap the receive size again", async () => {
  const client = connect({ channelOptions: { "grpc.max_receive_message_length": GRPC_DEFAULT_RECEIVE_LIMIT } });
  const values = await setSixMebibytes(client);
  await assert.rejects(client.getMany([...values.keys()]), ResourceExhaustedError);
  const [first] = await client.getMany(["big:0"]);
  assert.ok(first?.data.equals(values.get("big:0")!));
});
