// The built package loads both ways, by its own name (Node resolves a package's
// self-reference through its "exports"): `require` gets the CommonJS build, `import`
// the ES module entry, and both reach a live server with the same classes; and
// TypeScript finds the types of each.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { type RunningServer, startServer } from "./server";

const run = promisify(execFile);
const packageDir = join(__dirname, "..", "..");
let server: RunningServer;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

async function node(args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, args, { cwd: packageDir, env: { ...process.env, CACHET_ADDRESS: server.address } });
  return stdout.trim();
}

const roundTrip = `
  const client = new CachetClient(process.env.CACHET_ADDRESS, { namespace: "packaging" });
  await client.set("k", "v");
  const value = await client.get("k");
  const error = await client.get("").catch((e) => e);
  client.close();
  console.log(value.data.toString(), error instanceof CachetError, error.constructor.name);
`;

test("require() loads the CommonJS build", async () => {
  const out = await node(["-e", `const { CachetClient, CachetError } = require("@cachet-dev/cachet-client");
    (async () => { ${roundTrip} })().catch((e) => { console.error(e); process.exit(1); });`]);
  assert.equal(out, "v true InvalidArgumentError");
});

test("import loads the ES module entry, with the same classes as require()", async () => {
  const out = await node(["--input-type=module", "-e", `import { CachetClient, CachetError } from "@cachet-dev/cachet-client";
    import { createRequire } from "node:module";
    const required = createRequire(import.meta.url)("@cachet-dev/cachet-client");
    if (required.CachetError !== CachetError) throw new Error("two copies of the client");
    ${roundTrip}`]);
  assert.equal(out, "v true InvalidArgumentError");
});

test("TypeScript resolves the types of both entry points", async () => {
  const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
  const fixtures = ["esm-consumer.mts", "cjs-consumer.cts"].map((name) => join("test", "fixtures", name));
  await node([tsc, "--noEmit", "--strict", "--module", "node16", "--moduleResolution", "node16", "--types", "node", ...fixtures]);
});
