// The page's server mode end to end (issue #13 item 7): a `pigment serve` with the tiny SD 1.5
// fixture on one loopback port, the page from web/serve.mjs on another (so every call is cross
// origin, CORS preflights included, with an API key), headless Chromium. Generate with the
// server toggle on must draw diffusers' golden for the settings (mean <= 1 level, max <= 8, as
// tests/serve.rs), txt2img and img2img; a wrong key and a server without --cors-origin must give
// a clear error on the page instead of an image.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { canvasVsGolden, fillForm, waitFor } from './e2e_common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const BIN = process.env.PIGMENT_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release/pigment');
const KEY = 'e2e-secret';
const { server, port } = await serve(root);
const origin = `http://127.0.0.1:${port}`;
let failed = false;
const check = (ok, msg) => { console.log(`${ok ? 'ok  ' : 'FAIL'} ${msg}`); if (!ok) failed = true; };

/** `pigment serve` on a free loopback port; resolves once it prints its address. */
function pigmentServe(args) {
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--model', path.join(root, 'tests/fixtures/sd15-tiny'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  return new Promise((ok, fail) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) ok({ child, url: m[1], log: () => log });
    });
    child.on('exit', (code) => fail(new Error(`pigment serve exited (${code}) before listening:\n${log}`)));
  });
}

/** Generate with the form's settings; the canvas vs a golden as [mean, max], or the error. */
async function generate(page, sampler, golden, { steps = 4, strength = 0.75 } = {}) {
  await fillForm(page, sampler, { steps, strength });
  await page.selectOption('#schedule', 'normal');
  await page.evaluate(() => { delete document.body.dataset.done; document.getElementById('error').textContent = ''; });
  await page.click('#generate');
  await waitFor(page, 'generation', () => document.body.dataset.done || document.getElementById('error').textContent);
  const err = await page.textContent('#error');
  if (err) return { err };
  const [mean, max, progress] = await canvasVsGolden(page, golden);
  return { mean, max, progress };
}

const t0 = Date.now();
const good = await pigmentServe(['--cors-origin', origin, '--api-key', KEY, '--preview-every', '1']);
const closed = await pigmentServe([]);
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-dev-shm-usage', '--no-first-run'] });
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  [page] ${m.text().split('\n')[0]}`); });
  await page.goto(`${origin}/web/index.html`);
  await waitFor(page, 'page start', () => /Ready|Failed/.test(document.getElementById('status').textContent), 60e3);
  // No model is loaded in the page: the toggle alone enables Generate.
  check(await page.isDisabled('#generate'), 'Generate disabled without a model');
  await page.check('#server-on');
  check(!(await page.isDisabled('#generate')), 'the server toggle enables Generate');
  await page.fill('#server-url', good.url);
  await page.fill('#server-key', KEY);

  let r = await generate(page, 'pndm', '/tests/fixtures/golden/sd15-tiny/txt2img.png');
  check(!r.err && r.mean <= 1 && r.max <= 8 && r.progress === 1, `server txt2img (PLMS) vs golden: ${r.err ?? `mean ${r.mean.toFixed(3)} max ${r.max}, progress ${r.progress}`}`);

  await page.setInputFiles('#init-file', path.join(root, 'tests/fixtures/golden/img2img/init.png'));
  await waitFor(page, 'init image', () => !document.getElementById('init-wrap').hidden);
  r = await generate(page, 'euler', '/tests/fixtures/golden/img2img/img2img_euler.png', { steps: 5, strength: 0.6 });
  check(!r.err && r.mean <= 1 && r.max <= 8, `server img2img (Euler) vs golden: ${r.err ?? `mean ${r.mean.toFixed(3)} max ${r.max}`}`);
  await page.click('#clear-init');

  // The hires fix fields become A1111's enable_hr / hr_* (tests/hires.rs' Lanczos golden).
  await fillForm(page, 'euler', { steps: 4, strength: 0.75 });
  await page.fill('#width', '32');
  await page.fill('#height', '32');
  await page.check('#hires-on');
  await page.fill('#hires-scale', '2');
  await page.fill('#hires-steps', '4');
  await page.fill('#hires-denoise', '0.5');
  await page.selectOption('#hires-upscaler', 'lanczos');
  await page.evaluate(() => { delete document.body.dataset.done; document.getElementById('error').textContent = ''; });
  await page.click('#generate');
  await waitFor(page, 'hires generation', () => document.body.dataset.done || document.getElementById('error').textContent);
  const hiresErr = await page.textContent('#error');
  const [hm, hx] = hiresErr ? [Infinity, Infinity] : await canvasVsGolden(page, '/tests/fixtures/golden/hires/lanczos.png');
  check(hm <= 1 && hx <= 8, `server hires fix (Lanczos) vs golden: ${hiresErr || `mean ${hm.toFixed(3)} max ${hx}`}`);
  await page.uncheck('#hires-on');

  await page.fill('#server-key', 'wrong');
  r = await generate(page, 'pndm', '/tests/fixtures/golden/sd15-tiny/txt2img.png');
  check(/401/.test(r.err ?? '') && /API key/.test(r.err), `wrong key: ${r.err ?? 'an image'}`);

  // A server that allows no other origin: the browser refuses its answers.
  await page.fill('#server-url', closed.url);
  await page.fill('#server-key', '');
  r = await generate(page, 'pndm', '/tests/fixtures/golden/sd15-tiny/txt2img.png');
  check(/cannot reach/.test(r.err ?? '') && /--cors-origin/.test(r.err), `server without --cors-origin: ${r.err ?? 'an image'}`);
} catch (e) {
  check(false, e.message);
} finally {
  await browser.close();
  good.child.kill();
  closed.child.kill();
  server.close();
}
console.log(`e2e server mode: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
