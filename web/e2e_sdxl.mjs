// SDXL on the page end to end in headless Chromium (as e2e.mjs: SwiftShader WebGPU), each canvas
// against the PNG diffusers made for the same settings (mean <= 1 level, max <= 8, as
// tests/sdxl.rs) on the tiny SDXL folder the Rust tests write (tests/common/sdxl.rs; web/test.sh
// runs one):
// * the folder from a URL (model_index.json lists text_encoder_2): txt2img, Euler, cfg 5, 2 steps
//   → golden/sdxl-tiny/txt2img.png;
// * SDXL-Turbo's recipe from a picked folder: the folder with turbo.safetensors' scheduler config
//   (Euler a, trailing spacing), 1 step, guidance 0 (no unconditional batch) → turbo.png;
// * the SDXL single file (tests/fixtures/sdxl-tiny.manifest.json.gz), split per component by
//   the page, configs from the folder's URL → txt2img.png again;
// * SD-Turbo's recipe (an SD 2.x model): tests/fixtures/sd21-tiny with stabilityai/sd-turbo's
//   scheduler config (Euler, trailing), picked, 1 step, guidance 0 → golden/sd21-tiny/turbo.png
//   (tools/fixtures_sd_turbo.py).
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs/promises';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { canvasVsGolden, fillForm, waitFor } from './e2e_common.mjs';
import { readSafetensors } from './e2e_fixtures.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixtures = process.env.PIGMENT_SDXL_FIXTURES || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'tmp/fixtures');
const folder = path.join(fixtures, 'sdxl-tiny');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--enable-unsafe-webgpu'];
const GOLDEN = '/tests/fixtures/golden/sdxl-tiny';
let failed = false;
const check = (ok, msg) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${msg}`); if (!ok) failed = true; };

for (const f of ['model_index.json', 'text_encoder_2/model.safetensors']) {
  await fs.access(path.join(folder, f)).catch(() => {
    console.log(`FAIL ${folder}/${f} is missing: run \`cargo test --release --test sdxl sdxl_single_file_matches_the_folder\` first (web/test.sh does)`);
    process.exit(1);
  });
}

// The Turbo folder: sdxl-tiny with the scheduler config its golden was made with.
const turboMeta = readSafetensors(await fs.readFile(path.join(root, 'tests/fixtures/golden/sdxl-tiny/turbo.safetensors'))).header.__metadata__;
const turboScheduler = JSON.parse(turboMeta.pigment).scheduler_config;
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pigment-e2e-sdxl-'));
const turbo = path.join(tmp, 'sdxl-turbo-tiny');
await fs.cp(folder, turbo, { recursive: true });
await fs.writeFile(path.join(turbo, 'scheduler/scheduler_config.json'), turboScheduler);
check(JSON.parse(turboScheduler).timestep_spacing === 'trailing', `turbo scheduler config: ${turboScheduler}`);
// The SD-Turbo folder: sd21-tiny with sd-turbo's scheduler config.
const sdTurboMeta = readSafetensors(await fs.readFile(path.join(root, 'tests/fixtures/golden/sd21-tiny/turbo.safetensors'))).header.__metadata__;
const sdTurbo = path.join(tmp, 'sd-turbo-tiny');
await fs.cp(path.join(root, 'tests/fixtures/sd21-tiny'), sdTurbo, { recursive: true, dereference: true });
await fs.writeFile(path.join(sdTurbo, 'scheduler/scheduler_config.json'), JSON.parse(sdTurboMeta.pigment).scheduler_config);

const { server, port } = await serve(root, 0, { '/sdxl/': fixtures });
const base = `http://127.0.0.1:${port}`;

/** Fill the form (tests/sdxl.rs `options()` with the overrides), generate, compare. */
async function generateAndCompare(page, what, golden, { sampler = 'euler', steps = 2, guidance = 5, goldenDir = GOLDEN } = {}) {
  await fillForm(page, sampler, { steps, strength: 0.75 });
  await page.fill('#guidance', String(guidance));
  await page.fill('#preview-every', '0');
  await page.evaluate(() => { delete document.body.dataset.done; });
  const t0 = Date.now();
  await page.click('#generate');
  await waitFor(page, `${what}: generation`, () => document.body.dataset.done || document.getElementById('error').textContent);
  const err = await page.textContent('#error');
  if (err) throw new Error(`${what}: ${err}`);
  const [mean, max] = await canvasVsGolden(page, `${goldenDir}/${golden}`);
  check(mean <= 1 && max <= 8, `${what}: canvas vs ${golden}: mean ${mean.toFixed(3)} max ${max} levels (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

/** Wait for a load started by `start`; the status line must say SDXL (unless `sdxl` is false). */
async function load(page, what, start, sdxl = true) {
  await page.evaluate(() => { delete document.body.dataset.model; });
  await start();
  await waitFor(page, `${what}: load`, () => document.body.dataset.model || document.getElementById('error').textContent);
  const err = await page.textContent('#error');
  if (err) throw new Error(`${what}: ${err}`);
  const status = await page.textContent('#status');
  check(/\(SDXL\) loaded/.test(status) === sdxl, `${what}: ${status}`);
  return status;
}

const t0 = Date.now();
const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page] ${m.text().split('\n')[0]}`); });
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${base}/web/index.html`);
  await waitFor(page, 'WebGPU start', () => /Ready|Failed/.test(document.getElementById('status').textContent), 60e3);

  // 1. The folder from a URL: four weight files, text_encoder_2 among them.
  const s = await load(page, 'SDXL folder URL', async () => {
    await page.fill('#model-url', '/sdxl/sdxl-tiny');
    await page.click('#load-url');
  });
  check(/4 files downloaded/.test(s), 'SDXL folder URL: 4 weight files (text_encoder_2 too)');
  await generateAndCompare(page, 'SDXL folder URL, Euler, cfg 5', 'txt2img.png');

  // 2. SDXL-Turbo: picked folder with the trailing-spacing scheduler, 1 step, guidance 0.
  await load(page, 'SDXL-Turbo picked folder', () => page.setInputFiles('#folder', turbo));
  await generateAndCompare(page, 'SDXL-Turbo, 1 step, guidance 0, Euler a', 'turbo.png', { sampler: 'euler-a', steps: 1, guidance: 0 });

  // 3. The single file, configs from the folder (its tiny head counts cannot be inferred).
  await page.fill('#config-url', '/sdxl/sdxl-tiny');
  await load(page, 'SDXL single file', () => page.setInputFiles('#files', path.join(fixtures, 'sdxl-tiny.safetensors')));
  await generateAndCompare(page, 'SDXL single file, Euler, cfg 5', 'txt2img.png');

  // 4. SD-Turbo: an SD 2.x folder with the trailing-spacing Euler scheduler, 1 step, guidance 0.
  await page.fill('#config-url', '');
  await load(page, 'SD-Turbo picked folder', () => page.setInputFiles('#folder', sdTurbo), false);
  await generateAndCompare(page, 'SD-Turbo, 1 step, guidance 0, Euler', 'turbo.png',
    { sampler: 'euler', steps: 1, guidance: 0, goldenDir: '/tests/fixtures/golden/sd21-tiny' });
} catch (e) {
  check(false, e.message);
} finally {
  await browser.close();
  server.close();
  await fs.rm(tmp, { recursive: true, force: true });
}
console.log(`e2e_sdxl: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
