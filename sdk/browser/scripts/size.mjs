// Size budget (DESIGN §12: "a few KB"): minify dist/index.js with esbuild, gzip it
// at level 9 with node's zlib, and fail when it exceeds SIZE_LIMIT bytes (default 4096).
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { transformSync } from "esbuild";

const limit = Number(process.env.SIZE_LIMIT || 4096);
const src = readFileSync(new URL("../dist/index.js", import.meta.url), "utf8");
const min = transformSync(src, { minify: true, format: "esm", target: "es2020" }).code;
const gz = gzipSync(min, { level: 9 }).length;
console.log(`dist/index.js: ${src.length} B, minified ${min.length} B, minified+gzipped ${gz} B (limit ${limit} B)`);
if (gz > limit) {
  console.error(`size check failed: ${gz} B > ${limit} B`);
  process.exit(1);
}
