#!/usr/bin/env bash
# The browser tests, in headless Chromium with WebGPU (SwiftShader): wasm-bindgen-test tests of
# kernels and of a whole generation (tests/web_*.rs), then the page end to end (web/e2e.mjs), its
# LoRA / embedding / TAESD / hires extras (web/e2e_extras.mjs), SDXL, SDXL-Turbo and SD-Turbo
# (web/e2e_sdxl.mjs), and its server mode against a `pigment serve` (web/e2e_server.mjs).
# Needs chromium, chromium-driver, wasm-bindgen-cli = Cargo.lock's wasm-bindgen and node (.ci/run
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}"
start=$SECONDS
# Chromium's flags for the wasm-bindgen-test runner are in webdriver.json (--enable-unsafe-webgpu).
cargo test --release --target wasm32-unknown-unknown --no-default-features --test web_kernels --test web_pipeline
web/build.sh
# The single-file checkpoint e2e.mjs picks is assembled from the sd15-tiny folder by its manifest.
cargo test --release --test weights manifests_assemble_single_files
export PIGMENT_SINGLE_FILE="${CARGO_TARGET_DIR:-$PWD/target}/tmp/fixtures/sd15-tiny.safetensors"
# e2e_sdxl.mjs's tiny SDXL folder and single file (target/tmp/fixtures/sdxl-tiny*), written by
# this test (tests/common/sdxl.rs, then the manifest).
cargo test --release --test sdxl sdxl_single_file_matches_the_folder
(cd web && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; })
node web/e2e.mjs
node web/e2e_extras.mjs
node web/e2e_sdxl.mjs
# The cargo test above built target/release/pigment, which the server-mode test starts.
node web/e2e_server.mjs
echo "web tests: $((SECONDS - start)) s"
