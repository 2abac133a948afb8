#!/usr/bin/env bash
# `npm run build:agent`: the Docker agent as ONE executable file, dist/bin/streamspace-docker-agent
# (Node's single-executable application support), installed as the migration guide's Step 4 shows
# (deploy/systemd/, docs/DEPLOY-DOCKER-AGENT.md). Needs no `npm run build` first and nothing next to
# the executable at run time (no node_modules, no Node installation).
#
#   1. esbuild bundles agents/docker/main.ts and its dependencies into one CommonJS file.
#   2. node --experimental-sea-config turns it into a preparation blob (sea-config.json).
#   3. A copy of this machine's node binary gets the blob injected with postject.
#   4. The result is started from an empty directory with an empty environment: it must load every
#      module and refuse to start for the missing AGENT_TOKEN (exit 78), as the real one would.
#
# Environment: NODE_BIN (the node binary to embed, default `command -v node`; the executable runs
# where that binary runs: same OS, architecture and libc), AGENT_SEA_OUT (output path).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NODE_BIN=${NODE_BIN:-$(command -v node)}
OUT=${AGENT_SEA_OUT:-dist/bin/streamspace-docker-agent}
WORK=dist/sea
BUNDLE=$WORK/docker-agent.cjs
BLOB=$WORK/docker-agent.blob
# The sentinel Node's SEA support looks for (the same string from Node 18.16 to 24).
FUSE=NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2

fail() {
  echo "build-agent-sea: $*" >&2
  exit 1
}
started=$(date +%s%N)

[ -x "$NODE_BIN" ] || fail "no node binary at '$NODE_BIN' (set NODE_BIN)"
NODE_REAL=$(readlink -f "$NODE_BIN")
version=$("$NODE_REAL" --version)
major=${version#v}
major=${major%%.*}
# 20.x to 24.x: --experimental-sea-config + postject (25 replaced it with --build-sea).
{ [ "$major" -ge 20 ] && [ "$major" -le 24 ]; } || fail "node $version: this script supports Node 20 to 24"
grep -q "$FUSE" "$NODE_REAL" || fail "$NODE_REAL ($version) has no single-executable support (sentinel $FUSE missing; use an official Node build)"
grep -q "$FUSE:1" "$NODE_REAL" && fail "$NODE_REAL is itself a single-executable application; point NODE_BIN at a plain node"
[ -x node_modules/.bin/esbuild ] || fail "node_modules/.bin/esbuild missing: run npm ci"
[ -x node_modules/.bin/postject ] || fail "node_modules/.bin/postject missing: run npm ci"

mkdir -p "$WORK" "$(dirname "$OUT")"

# 1. One CommonJS file. A SEA's require() loads only Node's built-in modules (anything else throws,
#    after a process warning), so the bundle must hold everything else. The optional native add-ons
#    are replaced by a module that throws, as a missing add-on does: each is required inside a
#    try/catch by its user, which falls back to plain JavaScript (ws: bufferutil, utf-8-validate; ssh2,
#    reached through dockerode's docker-modem and used only for ssh:// Docker hosts: cpu-features and
#    its sshcrypto.node binding). Then nothing but built-ins may be left outside the bundle.
"$NODE_REAL" -e '
  const { builtinModules } = require("node:module");
  const [entry, outfile, target] = process.argv.slice(1);
  const NATIVE = /^(bufferutil|utf-8-validate|cpu-features)$|\.node$/;
  const stub = {
    name: "optional-native-addons",
    setup(build) {
      build.onResolve({ filter: NATIVE }, (args) => ({ path: args.path, namespace: "absent-addon" }));
      build.onLoad({ filter: /.*/, namespace: "absent-addon" }, (args) => ({
        contents: `throw Object.assign(new Error(${JSON.stringify(`${args.path} is not part of the single executable`)}), { code: "MODULE_NOT_FOUND" });`,
        loader: "js",
      }));
    },
  };
  require("esbuild")
    .build({ entryPoints: [entry], outfile, bundle: true, platform: "node", target, format: "cjs", legalComments: "none", logLevel: "warning", metafile: true, plugins: [stub] })
    .then(({ metafile }) => {
      const left = new Set();
      for (const [file, input] of Object.entries(metafile.inputs))
        for (const imp of input.imports)
          if (imp.external && !imp.path.startsWith("node:") && !builtinModules.includes(imp.path)) left.add(`${imp.path} (from ${file})`);
      if (left.size) {
        console.error(`build-agent-sea: the bundle leaves out ${[...left].join(", ")}: a single executable cannot load it`);
        process.exit(1);
      }
    }, () => process.exit(1));
' agents/docker/main.ts "$BUNDLE" "node$major"

# 2. The preparation blob, made by the same node that is embedded (the blob is version-specific).
cat >"$WORK/sea-config.json" <<EOF
{
  "main": "$ROOT/$BUNDLE",
  "output": "$ROOT/$BLOB",
  "disableExperimentalSEAWarning": true,
  "useSnapshot": false,
  "useCodeCache": false
}
EOF
quiet() { # runs "$@", printing its output only when it fails
  local out
  out=$("$@" 2>&1) || fail "$* failed: $out"
}
quiet "$NODE_REAL" --experimental-sea-config "$WORK/sea-config.json"

# 3. Copy node and inject the blob (into a temporary file first: OUT is replaced atomically).
tmp="$OUT.tmp.$$"
trap 'rm -f "$tmp"' EXIT
cp "$NODE_REAL" "$tmp"
chmod 0755 "$tmp"
# (postject's LIEF warns "Can't find string offset for section name '.note…'" on Node's ELF: harmless.)
quiet node_modules/.bin/postject "$tmp" NODE_SEA_BLOB "$BLOB" --sentinel-fuse "$FUSE"
mv -f "$tmp" "$OUT"
trap - EXIT

# 4. Smoke test from an empty directory with an empty environment (production mode, no token).
probe=$(mktemp -d)
cp "$OUT" "$probe/agent"
set +e
smoke=$(cd "$probe" && env -i PATH=/usr/bin:/bin ./agent 2>&1)
code=$?
set -e
rm -rf "$probe"
if [ "$code" -ne 78 ] || ! grep -q 'refusing to start: .*AGENT_TOKEN' <<<"$smoke"; then
  fail "smoke test: expected exit 78 'refusing to start: ... AGENT_TOKEN ...' from the executable alone, got exit $code: $smoke"
fi

# A process warning here means the executable tried to require() something it does not hold.
if grep -q 'Warning' <<<"$smoke"; then
  fail "smoke test: the executable printed a warning: $smoke"
fi

ms=$((($(date +%s%N) - started) / 1000000))
size=$(stat -c %s "$OUT")
echo "build-agent-sea: $OUT ($((size / 1024 / 1024)) MiB, node $version, bundle $(($(stat -c %s "$BUNDLE") / 1024)) KiB) in ${ms} ms"
