// End to end in headless Chromium (playwright-core driving /usr/bin/chromium, WebGPU from
// SwiftShader): the page loads the tiny SD 1.5 fixture from a URL, generates from the form, and
// the canvas must match the PNG diffusers made for the same settings (mean <= 1 level, max <= 8,
// as tests/pipeline.rs); a reload loads from the Cache API without downloading; a single file
// picked with the file input (configs from a URL, as the CLI's --config) gives diffusers' Euler a
// image; img2img and inpainting from picked files match diffusers' pipelines; the brush paints
// the mask; "send to img2img" hands a result over; without WebGPU the page says so.
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { canvasVsGolden, fillForm, waitFor } from './e2e_common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const { server, hits, port } = await serve(root);
const base = `http://127.0.0.1:${port}`;
const weightHits = () => [...hits].filter(([p]) => p.endsWith('.safetensors')).reduce((s, [, n]) => s + n, 0);
let failed = false;
const check = (ok, msg) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${msg}`); if (!ok) failed = true; };

/** Fill the form, click Generate, compare the canvas with a golden PNG. */
async function generateAndCompare(page, sampler, golden, what, previews, { steps = 4, strength = 0.75, maskBlur = 4 } = {}) {
  await fillForm(page, sampler, { steps, strength });
  await page.fill('#mask-blur', String(maskBlur));
  await page.fill('#preview-every', '2');
  const t0 = Date.now();
  await page.click('#generate');
  await waitFor(page, `${what}: generation`, () => document.body.dataset.done || document.getElementById('error').textContent);
  const err = await page.textContent('#error');
  if (err) throw new Error(`${what}: ${err}`);
  const secs = (Date.now() - t0) / 1000;
  const [mean, max, progress] = await canvasVsGolden(page, golden);
  check(mean <= 1 && max <= 8, `${what}: canvas vs ${golden}: mean ${mean.toFixed(3)} max ${max} levels (${secs.toFixed(1)} s)`);
  check(progress === 1, `${what}: progress bar full`);
  const shown = Number(await page.evaluate(() => document.body.dataset.previews || 0));
  check(shown === previews, `${what}: ${shown} previews drawn (every 2 evaluations, expected ${previews})`);
  check(!(await page.isDisabled('#download')), `${what}: download enabled`);
}

const t0 = Date.now();
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--enable-unsafe-webgpu', ...FLAGS] });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page] ${m.text().split('\n')[0]}`); });
  await page.goto(`${base}/web/index.html`);
  await waitFor(page, 'WebGPU start', () => /Ready|Failed/.test(document.getElementById('status').textContent), 60e3);
  const adapter = await page.evaluate(() => window.pigmentAdapter);
  console.log(`adapter: ${JSON.stringify(adapter)}`);
  check(adapter && adapter.wgpu.f16 === false, 'SwiftShader: no shader-f16, f32 kernels');

  // 1. A diffusers folder from a URL, then the form.
  await page.fill('#model-url', '/tests/fixtures/sd15-tiny');
  await page.click('#load-url');
  await waitFor(page, 'load', () => document.body.dataset.model || document.getElementById('error').textContent);
  check(/3 files downloaded/.test(await page.textContent('#status')), `first load downloads: ${await page.textContent('#status')}`);
  await generateAndCompare(page, 'pndm', '/tests/fixtures/golden/sd15-tiny/txt2img.png', 'folder URL, PNDM', 2);
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const png = await fs.readFile(await dl.path());
  const text = png.toString('latin1');
  check(dl.suggestedFilename() === 'pigment-42.png' && png.subarray(1, 4).toString() === 'PNG'
    && text.includes('parameters\0a photograph of an astronaut riding a horse\nNegative prompt: blurry, low quality\n'
      + 'Steps: 4, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: sd15-tiny'),
  `download: ${dl.suggestedFilename()}, ${png.length} bytes with A1111 parameters`);

  // 1b. img2img from a picked init image, inpainting with a mask file (diffusers'
  // StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline, tools/fixtures_img2img.py:
  // 5 steps at strength 0.6 / 0.75 run 3, so one preview), a painted mask, send to img2img.
  const parameters = async () => {
    const [d] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    return (await fs.readFile(await d.path())).toString('latin1');
  };
  await page.setInputFiles('#init-file', path.join(root, 'tests/fixtures/golden/img2img/init.png'));
  await waitFor(page, 'init image', () => !document.getElementById('init-wrap').hidden);
  await generateAndCompare(page, 'euler', '/tests/fixtures/golden/img2img/img2img_euler.png', 'img2img, Euler', 1, { steps: 5, strength: 0.6 });
  check((await parameters()).includes('Seed: 42, Size: 64x64, Model: sd15-tiny, Denoising strength: 0.6'), 'img2img download: Denoising strength');
  await page.setInputFiles('#mask-file', path.join(root, 'tests/fixtures/golden/img2img/mask.png'));
  await waitFor(page, 'mask', () => /inpainting/.test(document.getElementById('init-status').textContent));
  await generateAndCompare(page, 'euler', '/tests/fixtures/golden/img2img/inpaint4_euler.png', 'inpainting, mask file, Euler', 1, { steps: 5, strength: 0.75, maskBlur: 0 });
  check((await parameters()).includes('Denoising strength: 0.75, Mask blur: 0'), 'inpainting download: strength and mask blur');
  // The brush: a stroke across the middle row paints white there and nothing in the corners.
  await page.click('#clear-mask');
  // page.mouse works in viewport coordinates: bring the canvas into view first
  await page.locator('#mask-canvas').scrollIntoViewIfNeeded();
  const box = await page.locator('#mask-canvas').boundingBox();
  await page.fill('#brush', '8');
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.8, box.y + box.height / 2, { steps: 8 });
  await page.mouse.up();
  const [mid, corner, status] = await page.evaluate(() => {
    const m = document.getElementById('mask-canvas');
    const px = (x, y) => Array.from(m.getContext('2d').getImageData(x, y, 1, 1).data);
    return [px(32, 32), px(2, 2), document.getElementById('init-status').textContent];
  });
  check(mid[0] === 255 && mid[3] === 255 && corner[3] === 0 && /inpainting/.test(status), `brush: painted ${mid}, corner ${corner}; ${status}`);
  // Send to img2img: the result becomes the init image, its mask empty.
  await page.click('#send-to-img2img');
  const same = await page.evaluate(() => {
    const a = document.getElementById('canvas'), b = document.getElementById('init-canvas');
    const da = a.getContext('2d').getImageData(0, 0, a.width, a.height).data;
    const db = b.getContext('2d').getImageData(0, 0, b.width, b.height).data;
    return da.length === db.length && da.every((v, i) => v === db[i]) && !/inpainting/.test(document.getElementById('init-status').textContent);
  });
  check(same, 'send to img2img: the init image is the result, no mask');
  await page.click('#clear-init');

  // 2. A reload loads from the browser cache: no weights requested again.
  const before = weightHits();
  await page.reload();
  await waitFor(page, 'restart', () => /Ready|Failed/.test(document.getElementById('status').textContent), 60e3);
  await page.fill('#model-url', '/tests/fixtures/sd15-tiny');
  await page.click('#load-url');
  await waitFor(page, 'reload', () => document.body.dataset.model || document.getElementById('error').textContent);
  check(weightHits() === before && /3 from the browser cache/.test(await page.textContent('#status')),
    `reload uses the cache (${weightHits() - before} weight requests): ${await page.textContent('#status')}`);

  // 3. A single-file checkpoint picked with the file input, configs from a URL.
  await page.fill('#config-url', '/tests/fixtures/sd15-tiny');
  await page.evaluate(() => { delete document.body.dataset.model; });
  // Not committed: web/test.sh assembles it from the folder by its manifest (tests/weights.rs).
  await page.setInputFiles('#files', process.env.PIGMENT_SINGLE_FILE || path.join(root, 'target/tmp/fixtures/sd15-tiny.safetensors'));
  await waitFor(page, 'single file', () => document.body.dataset.model || document.getElementById('error').textContent);
  await generateAndCompare(page, 'euler-a', '/tests/fixtures/golden/sd15-tiny/sampler_euler_a.png', 'picked single file, Euler a', 1);

  // 4. Bad input: a clear error on the page, not a hang.
  await page.fill('#width', '100');
  await page.click('#generate');
  await waitFor(page, 'bad width', () => document.getElementById('error').textContent);
  check(/width 100.*96.*104/.test(await page.textContent('#error')), `bad width: ${await page.textContent('#error')}`);
} catch (e) {
  check(false, e.message);
} finally {
  await browser.close();
}

// 5. Without WebGPU the page says what to do.
const plain = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
try {
  const page = await plain.newPage();
  await page.goto(`${base}/web/index.html`);
  await waitFor(page, 'no WebGPU', () => document.getElementById('error').textContent, 60e3);
  const msg = await page.textContent('#error');
  check(/WebGPU/.test(msg) && /enable-unsafe-webgpu/.test(msg), `without a WebGPU adapter: ${msg}`);
  // A browser without the API at all (navigator.gpu undefined).
  const old = await plain.newPage();
  await old.addInitScript(() => { delete Navigator.prototype.gpu; delete WorkerNavigator.prototype.gpu; });
  await old.goto(`${base}/web/index.html`);
  await waitFor(old, 'no navigator.gpu', () => document.getElementById('error').textContent, 60e3);
  const msg2 = await old.textContent('#error');
  check(/no WebGPU \(navigator.gpu is undefined\)/.test(msg2), `without navigator.gpu: ${msg2}`);
} catch (e) {
  check(false, e.message);
} finally {
  await plain.close();
  server.close();
}
console.log(`e2e: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
