// A server with TLS, client certificates (mutual TLS) and auth required, and an API
// key granted one namespace for read and write. The certificates come from trustme
// (a dev dependency of the repo's venv, which runs the server anyway).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  CachetClient,
  NamespaceNotGrantedError,
  RoleNotGrantedError,
  UnauthenticatedError,
  UnavailableError,
} from "../src";
import { repoRoot, type RunningServer, startServer } from "./server";

const NAMESPACE = "ts-tls";
const TOKEN = "ts-test-key-3e9b41";
const READ_ONLY_TOKEN = "ts-test-reader-7c20d5";
let server: RunningServer;
let dir = "";
let address = "";
const clients: CachetClient[] = [];

const MAKE_CERTS = `
import sys, trustme
out = sys.argv[1]
ca = trustme.CA()
ca.cert_pem.write_to_path(out + "/ca.pem")
for name, identity in (("server", "127.0.0.1"), ("client", "ts-client")):
    cert = ca.issue_cert(identity)
    cert.cert_chain_pems[0].write_to_path(out + f"/{name}.pem")
    cert.private_key_pem.write_to_path(out + f"/{name}-key.pem")
`;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "cachet-ts-tls-"));
  execFileSync(join(repoRoot(), ".venv", "bin", "python"), ["-c", MAKE_CERTS, dir]);
  const digest = (token: string) => createHash("sha256").update(token).digest("hex");
  writeFileSync(
    join(dir, "cachet.yaml"),
    `auth:\n  mode: required\n  api_keys:\n` +
      `    - id: ts-test\n      sha256: ${digest(TOKEN)}\n      namespaces: [${NAMESPACE}]\n      roles: [read, write]\n` +
      `    - id: ts-reader\n      sha256: ${digest(READ_ONLY_TOKEN)}\n      namespaces: [${NAMESPACE}]\n      roles: [read]\n`,
  );
  server = await startServer({
    CACHET_CONFIG_FILE: join(dir, "cachet.yaml"),
    CACHET_AUTH__MODE: "required",
    CACHET_TLS__CERT_FILE: join(dir, "server.pem"),
    CACHET_TLS__KEY_FILE: join(dir, "server-key.pem"),
    CACHET_TLS__CLIENT_CA_FILE: join(dir, "ca.pem"),
  });
  address = server.address;
});

after(async () => {
  clients.forEach((c) => c.close());
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const file = (name: string) => readFileSync(join(dir, name));

function connect(namespace: string, token?: string | (() => Promise<string>), withClientCertificate = true): CachetClient {
  const tls = withClientCertificate ? { ca: file("ca.pem"), cert: file("client.pem"), key: file("client-key.pem") } : { ca: file("ca.pem") };
  const client = new CachetClient(address, { namespace, tls, token });
  clients.push(client);
  return client;
}

test("TLS and a token", async () => {
  const caFile = join(dir, "ca.pem");
  const certFile = join(dir, "client.pem");
  const keyFile = join(dir, "client-key.pem");
  const vault = { read: async (_: string) => ({ token: TOKEN }) };
  // example: tls
  const client = new CachetClient(address, {
    namespace: "ts-tls",
    tls: { ca: readFileSync(caFile), cert: readFileSync(certFile), key: readFileSync(keyFile) }, // cert + key: mTLS
    token: async () => (await vault.read("cachet")).token, // or a string; asked once per call
  });
  await client.set("k", "v");
  assert.equal((await client.get("k"))?.data.toString(), "v");
  // end
  clients.push(client);
});

test("the token reaches streams, and a token function is asked on every call", async () => {
  let asked = 0;
  const client = connect(NAMESPACE, async () => {
    asked++;
    return TOKEN;
  });
  const messages = await client.events.subscribe(["news"]);
  assert.equal(await client.events.publish("news", { payload: "hi" }), 1);
  for await (const message of messages) {
    assert.equal(message.event?.payload.toString(), "hi");
    break;
  }
  const held = await client.locks.hold("leader", 5000); // a bidirectional stream
  await held.release();
  for (let i = 0; i < 3; i++) await client.get("k");
  assert.ok(asked >= 6, `asked ${asked} times`);
});

test("no token, a wrong token, another namespace, a missing role", async () => {
  await assert.rejects(connect(NAMESPACE).get("k"), UnauthenticatedError);
  await assert.rejects(connect(NAMESPACE, "wrong").get("k"), UnauthenticatedError);
  await assert.rejects(connect("someone-else", TOKEN).get("k"), NamespaceNotGrantedError);
  await assert.rejects(connect(NAMESPACE, TOKEN).admin.serverInfo(), RoleNotGrantedError);
});

test("TLS without the client certificate, and plaintext, do not connect", async () => {
  await assert.rejects(connect(NAMESPACE, TOKEN, false).get("k"), UnavailableError);
  const plain = new CachetClient(address, { namespace: NAMESPACE });
  clients.push(plain);
  await assert.rejects(plain.get("k"), UnavailableError);
});

test("a read-only credential: its session's writes are refused one by one, its reads work", async () => {
  await connect(NAMESPACE, TOKEN).set("shared", "written by the writer");
  const reader = connect(NAMESPACE, READ_ONLY_TOKEN);
  await assert.rejects(reader.set("shared", "x"), RoleNotGrantedError);
  const session = reader.session();
  const [write, read, increment] = await Promise.allSettled([session.set("shared", "x"), session.get("shared"), session.increment("n")]);
  // Refused in its own result, as the unary call is (ROLE_NOT_GRANTED: RoleNotGrantedError).
  assert.ok(write.status === "rejected" && write.reason instanceof RoleNotGrantedError, `the write: ${write.status}`);
  assert.ok(increment.status === "rejected" && increment.reason instanceof RoleNotGrantedError);
  assert.ok(read.status === "fulfilled" && read.value?.data.toString() === "written by the writer");
  assert.equal((await session.hashGet("no-hash", ["f"]))[0], undefined); // the stream goes on
  await session.close();
  // A Batch needs `write` as soon as one operation writes: the call itself is refused; reads alone pass.
  await assert.rejects(reader.batch().get("shared").set("shared", "x").execute(), RoleNotGrantedError);
  const [got] = await reader.batch().get("shared").execute();
  assert.ok(got.status === "fulfilled" && got.value?.data.toString() === "written by the writer");
  // A Batch refused for its write: the write keeps the refusal, the batcher sends the reads again.
  const batcher = reader.batcher();
  const [first, refused, second] = await Promise.allSettled([batcher.get("shared"), batcher.set("shared", "x"), batcher.get("shared")]);
  assert.ok(refused.status === "rejected" && refused.reason instanceof RoleNotGrantedError, `the write: ${refused.status}`);
  for (const read of [first, second]) {
    assert.ok(read.status === "fulfilled" && read.value?.data.toString() === "written by the writer", `a read: ${read.status}`);
  }
});
