// Writes the package's ES module entry point, dist/esm/index.mjs, after tsc built
// the CommonJS one (dist/src). The ES entry re-exports the CommonJS build instead of
// being a second compilation, so a program whose dependencies both `import` and
// `require` the client loads one copy of it, and `instanceof CachetError` holds
// across both (Node's "dual package hazard").
import { createRequire } from "node:module";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const commonjs = createRequire(import.meta.url)(join(root, "dist", "src", "index.js"));
const names = Object.keys(commonjs).filter((name) => name !== "__esModule" && name !== "default").sort();
const out = join(root, "dist", "esm");
mkdirSync(out, { recursive: true });
writeFileSync(
  join(out, "index.mjs"),
  `import client from "../src/index.js";\n\nexport const { ${names.join(", ")} } = client;\nexport default client;\n`,
);
writeFileSync(join(out, "index.d.mts"), `export * from "../src/index.js";\n`);
console.log(`dist/esm/index.mjs re-exports ${names.length} names`);
