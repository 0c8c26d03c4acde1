// The page's extras end to end in headless Chromium (as e2e.mjs: SwiftShader WebGPU, the tiny
// SD 1.5 fixture from a URL), each canvas against the PNG diffusers made for the same settings
// (mean <= 1 level, max <= 8):
// * LoRA files, one picked and one by URL, with weights: golden/sd15-tiny/lora_kohya.png (kohya
//   x 0.8) and lora_both.png (+ PEFT x 0.5), as tests/lora.rs; removed: the base image again;
//   the PNG's parameters carry `Lora hashes` as the CLI writes them;
// * a textual-inversion embedding made of the token rows of "astronaut riding" (as
//   tests/clip.rs), used by its word: the plain Euler golden;
// * TAESD previews (a small random AutoencoderTiny decoder, e2e_fixtures.mjs): counted, unlike
//   the full VAE's, the one preview equal to the CLI's (golden/taesd/page_preview.png, made by
//   `node web/e2e_fixtures.mjs taesd DIR` then `pigment generate --model tests/fixtures/sd15-tiny
//   --no-f16 --seed 42 --width 64 --height 64 --steps 4 --cfg 7.5 --sampler euler --prompt P
//   --negative-prompt N --preview taesd --preview-every 2 --taesd DIR`: its OUTPUT-preview.png),
//   and the final image still the VAE's golden; preview "off" shows none;
// * hires fix with each upscaler: golden/hires/*.png (tests/hires.rs), drawn at the larger size;
// * a single-file checkpoint with a LoRA (its UNet tensors re-read for the merge);
// * clear errors: a LoRA that matches no layer, a file that is no LoRA, bad embeddings, TAESD
//   previews without TAESD, an upscaler the page lacks, generating without a model.
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs/promises';
import os from 'node:os';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { canvasVsGolden, fillForm, waitFor } from './e2e_common.mjs';
import { randn, readSafetensors, safetensors, writeTaesd } from './e2e_fixtures.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--enable-unsafe-webgpu'];
const PROMPT = 'a photograph of an astronaut riding a horse';
const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'pigment-e2e-extras-'));
let failed = false;
const check = (ok, msg) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${msg}`); if (!ok) failed = true; };

/** The sd15-tiny text encoder's token rows of `words` (each one token) as an embedding file. */
async function writeEmbedding(file, words) {
  const vocab = JSON.parse(await fs.readFile(path.join(root, 'tests/fixtures/sd15-tiny/tokenizer/vocab.json'), 'utf8'));
  const te = readSafetensors(await fs.readFile(path.join(root, 'tests/fixtures/sd15-tiny/text_encoder/model.safetensors')));
  const e = te.header['text_model.embeddings.token_embedding.weight'];
  const [, d] = e.shape, size = { F16: 2, F32: 4 }[e.dtype];
  const rows = words.map((w) => {
    const id = vocab[`${w}</w>`];
    if (id === undefined) throw new Error(`${w}: not one token`);
    const at = e.data_offsets[0] + id * d * size;
    return te.data.subarray(at, at + d * size);
  });
  await fs.writeFile(file, safetensors([['emb_params', e.dtype, [words.length, d], Buffer.concat(rows)]]));
  return d;
}

/** kohya's / A1111's short hash: SHA-256 of the tensor data, first 12 hex digits. */
async function loraHash(file) {
  return crypto.createHash('sha256').update(readSafetensors(await fs.readFile(file)).data).digest('hex').slice(0, 12);
}

/** Fill the form, generate; '' when done, else the #error text. */
async function generate(page, what, { sampler = 'euler', steps = 4, size = 64, prompt = PROMPT, previewEvery = 0, preview = 'full', hires = null } = {}) {
  await fillForm(page, sampler, { steps, strength: 0.75 });
  await page.fill('#prompt', prompt);
  await page.fill('#width', String(size));
  await page.fill('#height', String(size));
  await page.fill('#preview-every', String(previewEvery));
  await page.selectOption('#preview', preview);
  await page.setChecked('#hires-on', hires !== null);
  if (hires) {
    await page.fill('#hires-scale', String(hires.scale));
    await page.fill('#hires-steps', String(hires.steps));
    await page.fill('#hires-denoise', String(hires.denoise));
    await page.selectOption('#hires-upscaler', hires.upscaler);
  }
  await page.evaluate(() => { delete document.body.dataset.done; document.getElementById('error').textContent = ''; });
  await page.click('#generate');
  await waitFor(page, `${what}: generation`, () => document.body.dataset.done || document.getElementById('error').textContent);
  return page.textContent('#error');
}

async function compare(page, what, golden, opts) {
  const t0 = Date.now();
  const err = await generate(page, what, opts);
  if (err) { check(false, `${what}: ${err}`); return; }
  const [mean, max] = await canvasVsGolden(page, golden);
  check(mean <= 1 && max <= 8, `${what}: canvas vs ${golden}: mean ${mean.toFixed(3)} max ${max} levels (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

async function expectError(page, what, re, action) {
  await page.evaluate(() => { document.getElementById('error').textContent = ''; });
  try {
    await action();
    await waitFor(page, what, () => document.getElementById('error').textContent, 60e3);
  } catch (e) {
    check(false, `${what}: no error shown (${e.message})`);
    return;
  }
  const msg = await page.textContent('#error');
  check(re.test(msg), `${what}: ${msg}`);
}

async function parameters(page) {
  const [d] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  return (await fs.readFile(await d.path())).toString('latin1');
}

/** The last preview against a golden PNG: [mean, max] levels (Infinity when the sizes differ). */
const previewVsGolden = (page, golden) => page.evaluate(async (golden) => {
  const p = window.pigmentPreview;
  const bmp = await createImageBitmap(await (await fetch(golden)).blob(), { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  c.getContext('2d').drawImage(bmp, 0, 0);
  const want = c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data;
  if (!p || p.width !== bmp.width || p.height !== bmp.height) return [Infinity, Infinity];
  let sum = 0, max = 0, n = 0;
  for (let i = 0; i < want.length; i++) {
    if (i % 4 === 3) continue;
    const d = Math.abs(p.rgba[i] - want[i]);
    sum += d; max = Math.max(max, d); n++;
  }
  return [sum / n, max];
}, golden);
const previews = (page) => page.evaluate(() => Number(document.body.dataset.previews || 0));
const lastPreview = (page) => page.evaluate(() => Array.from(window.pigmentPreview?.rgba ?? []));
const pick = async (page, input, files) => page.setInputFiles(input, files);

const t0 = Date.now();
const { server, port } = await serve(root);
const base = `http://127.0.0.1:${port}`;
const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page] ${m.text().split('\n')[0]}`); });
  await page.goto(`${base}/web/index.html`);
  await waitFor(page, 'WebGPU start', () => /Ready|Failed/.test(document.getElementById('status').textContent), 60e3);
  // Before any model: a clear error, not a hang (the button is forced on).
  await expectError(page, 'hires without a model', /load a model first/, async () => {
    await page.setChecked('#hires-on', true);
    await page.evaluate(() => { document.getElementById('generate').disabled = false; });
    await page.click('#generate');
  });
  await page.fill('#model-url', '/tests/fixtures/sd15-tiny');
  await page.click('#load-url');
  await waitFor(page, 'load', () => document.body.dataset.model || document.getElementById('error').textContent);

  // 1. LoRAs: kohya picked (x 0.8), then PEFT by URL (x 0.5), then none.
  const kohya = path.join(root, 'tests/fixtures/lora/sd15-tiny-kohya.safetensors');
  await pick(page, '#lora-files', kohya);
  await waitFor(page, 'LoRA row', () => document.querySelector('#lora-list [data-name="sd15-tiny-kohya"]') || document.getElementById('error').textContent);
  await page.fill('#lora-list [data-name="sd15-tiny-kohya"] .lora-weight', '0.8');
  await compare(page, 'LoRA kohya x 0.8 (picked)', '/tests/fixtures/golden/sd15-tiny/lora_kohya.png');
  const text = await parameters(page);
  const hash = await loraHash(kohya);
  check(text.includes(`Model: sd15-tiny, Lora hashes: "sd15-tiny-kohya: ${hash}"`), `LoRA: parameters carry Lora hashes (sd15-tiny-kohya: ${hash})`);
  await page.fill('#lora-url', '/tests/fixtures/lora/sd15-tiny-peft.safetensors');
  await page.click('#lora-add-url');
  await waitFor(page, 'LoRA URL row', () => document.querySelector('#lora-list [data-name="sd15-tiny-peft"]') || document.getElementById('error').textContent);
  await page.fill('#lora-list [data-name="sd15-tiny-peft"] .lora-weight', '0.5');
  await compare(page, 'LoRA kohya x 0.8 + PEFT x 0.5 (URL)', '/tests/fixtures/golden/sd15-tiny/lora_both.png');
  for (const n of ['sd15-tiny-kohya', 'sd15-tiny-peft']) await page.click(`#lora-list [data-name="${n}"] button`);
  await compare(page, 'LoRAs removed', '/tests/fixtures/golden/sd15-tiny/sampler_euler.png');
  // A prompt tag for a LoRA added: the same merge as the list.
  await pick(page, '#lora-files', kohya);
  await waitFor(page, 'LoRA row again', () => document.querySelector('#lora-list [data-name="sd15-tiny-kohya"]'));
  await page.fill('#lora-list [data-name="sd15-tiny-kohya"] .lora-weight', '0');
  await compare(page, 'LoRA by prompt tag <lora:sd15-tiny-kohya:0.8>', '/tests/fixtures/golden/sd15-tiny/lora_kohya.png', { prompt: `${PROMPT} <lora:sd15-tiny-kohya:0.8>` });
  await page.click('#lora-list [data-name="sd15-tiny-kohya"] button');

  // LoRA errors.
  const none = path.join(tmp, 'elsewhere.safetensors');
  await fs.writeFile(none, safetensors([['lora_unet_no_such_layer.lora_down.weight', 'F32', [2, 4], randn(8, 9, 1)], ['lora_unet_no_such_layer.lora_up.weight', 'F32', [4, 2], randn(8, 10, 1)]]));
  await pick(page, '#lora-files', none);
  await waitFor(page, 'LoRA row (no layer)', () => document.querySelector('#lora-list [data-name="elsewhere"]') || document.getElementById('error').textContent);
  check(!(await page.textContent('#error')), 'a LoRA for no layer is added (it is checked against the model when merged)');
  await expectError(page, 'LoRA matching no layer', /matches no layer/, () => generate(page, 'no layer'));
  await page.click('#lora-list [data-name="elsewhere"] button');
  await expectError(page, 'a file that is no LoRA', /not a LoRA/, () => pick(page, '#lora-files', path.join(root, 'tests/fixtures/golden/sd15-tiny/cfg1.safetensors')));

  // 2. Textual inversion: "rider" = the rows of "astronaut riding".
  const rider = path.join(tmp, 'rider.safetensors');
  const d = await writeEmbedding(rider, ['astronaut', 'riding']);
  await pick(page, '#embedding-files', rider);
  await waitFor(page, 'embedding', () => /rider/.test(document.getElementById('embedding-list').textContent) || document.getElementById('error').textContent);
  await compare(page, 'embedding "rider" in the prompt', '/tests/fixtures/golden/sd15-tiny/sampler_euler.png', { prompt: 'a photograph of an rider a horse' });
  const wide = path.join(tmp, 'wide.safetensors');
  await fs.writeFile(wide, safetensors([['emb_params', 'F32', [1, d + 8], randn(d + 8, 3, 1)]]));
  await expectError(page, 'embedding of another width', new RegExp(`${d} wide`), () => pick(page, '#embedding-files', wide));
  const junk = path.join(tmp, 'junk.safetensors');
  await fs.writeFile(junk, Buffer.from('not a safetensors file at all'));
  await expectError(page, 'embedding that is not safetensors', /junk/, () => pick(page, '#embedding-files', junk));

  // 3. Previews: TAESD without weights is an error; with them, counted and unlike the VAE's.
  await expectError(page, 'TAESD previews without TAESD', /preview 'taesd' needs TAESD weights/, () => generate(page, 'no TAESD', { previewEvery: 2, preview: 'taesd' }));
  await compare(page, 'full VAE previews', '/tests/fixtures/golden/sd15-tiny/sampler_euler.png', { previewEvery: 2 });
  const full = await lastPreview(page);
  check(full.length === 64 * 64 * 4 && (await previews(page)) === 1, `full previews: ${await previews(page)} (expected 1)`);
  await pick(page, '#taesd-files', await writeTaesd(path.join(tmp, 'taesd')));
  await waitFor(page, 'TAESD', () => /TAESD: /.test(document.getElementById('taesd-status').textContent) || document.getElementById('error').textContent);
  await compare(page, 'TAESD previews, final image', '/tests/fixtures/golden/sd15-tiny/sampler_euler.png', { previewEvery: 2, preview: 'taesd' });
  const tiny = await lastPreview(page);
  const diff = tiny.length === full.length ? tiny.reduce((s, v, i) => s + Math.abs(v - full[i]), 0) / tiny.length : Infinity;
  check((await previews(page)) === 1 && diff > 10 && diff < Infinity, `TAESD previews: ${await previews(page)} (expected 1), mean ${diff.toFixed(1)} levels from the VAE's`);
  const [pm, px] = await previewVsGolden(page, '/tests/fixtures/golden/taesd/page_preview.png');
  check(pm <= 1 && px <= 8, `TAESD preview vs the CLI's (golden/taesd/page_preview.png): mean ${pm.toFixed(3)} max ${px} levels`);
  await compare(page, 'preview off', '/tests/fixtures/golden/sd15-tiny/sampler_euler.png', { previewEvery: 2, preview: 'off' });
  check((await previews(page)) === 0, `preview off: ${await previews(page)} previews`);

  // 4. Hires fix: 32x32 -> x2, 4 hires steps at denoise 0.5, each upscaler.
  for (const [upscaler, golden] of [['latent', 'latent'], ['latent-nearest', 'latent_nearest'], ['lanczos', 'lanczos']]) {
    await compare(page, `hires ${upscaler}`, `/tests/fixtures/golden/hires/${golden}.png`, { size: 32, hires: { scale: 2, steps: 4, denoise: 0.5, upscaler } });
  }
  const size = await page.evaluate(() => [document.getElementById('canvas').width, document.getElementById('canvas').height]);
  check(size[0] === 64 && size[1] === 64, `hires: the canvas is ${size.join('x')}`);
  check(/Size: 32x32, Model: sd15-tiny, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos/.test(await parameters(page)), 'hires: parameters as A1111');
  await expectError(page, 'hires with an upscaler the page lacks', /the page offers latent/, async () => {
    await page.evaluate(() => document.getElementById('hires-upscaler').add(new Option('ESRGAN', 'RealESRGAN_x4plus')));
    await generate(page, 'ESRGAN', { size: 32, hires: { scale: 2, steps: 4, denoise: 0.5, upscaler: 'RealESRGAN_x4plus' } });
  });

  // 5. A single file picked (configs from a URL): the LoRA merge re-reads its UNet tensors, and
  // the extras added so far come along to the new model.
  const single = process.env.PIGMENT_SINGLE_FILE || path.join(root, 'target/tmp/fixtures/sd15-tiny.safetensors');
  if (await fs.stat(single).catch(() => null)) {
    await page.fill('#config-url', '/tests/fixtures/sd15-tiny');
    await page.evaluate(() => { delete document.body.dataset.model; });
    await pick(page, '#files', single);
    await waitFor(page, 'single file', () => document.body.dataset.model || document.getElementById('error').textContent);
    await pick(page, '#lora-files', kohya);
    await waitFor(page, 'LoRA row (single file)', () => document.querySelector('#lora-list [data-name="sd15-tiny-kohya"]') || document.getElementById('error').textContent);
    await page.fill('#lora-list [data-name="sd15-tiny-kohya"] .lora-weight', '0.8');
    await compare(page, 'single file: LoRA kohya x 0.8', '/tests/fixtures/golden/sd15-tiny/lora_kohya.png');
    await compare(page, 'single file: embedding "rider" carried over', '/tests/fixtures/golden/sd15-tiny/lora_kohya.png', { prompt: 'a photograph of an rider a horse' });
  } else {
    console.log(`skip single file: no ${single} (web/test.sh assembles it)`);
  }
} catch (e) {
  check(false, e.message);
} finally {
  await browser.close();
  server.close();
  await fs.rm(tmp, { recursive: true, force: true });
}
console.log(`e2e extras: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
