#!/usr/bin/env bash
# Build the page's wasm: web/pkg/pigment.js + pigment_bg.wasm (ES module for `--target web`).
# No wasm-opt: Debian's binaryen 108 emits modules that fail to load (see the platform notes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown --no-default-features
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/pigment.wasm
echo "built web/pkg ($(du -h web/pkg/pigment_bg.wasm | cut -f1)); serve with: node web/serve.mjs"
