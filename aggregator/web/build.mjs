// Bundles the dashboard into OUTDIR (the first argument): index.html, app.js, app.css.
// aggregator/build.rs runs this with OUTDIR inside Cargo's OUT_DIR and embeds the result.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = process.argv[2];
if (!outdir) {
  console.error("usage: node build.mjs OUTDIR");
  process.exit(2);
}
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: { app: join(here, "src/main.js") },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  outdir,
  loader: { ".css": "css" },
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(outdir, "index.html"));
