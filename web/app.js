// The page: open WebGPU, load a model (URL or files), generate, show and save the image.
import init, * as wasm from './pkg/pigment.js';
import { loadModel, clearCache } from './model.js';
import * as img2img from './img2img.js';
import * as server from './server.js';
import * as extras from './extras.js';

const $ = (id) => document.getElementById(id);
const status = (s) => { $('status').textContent = s; };
const fail = (e) => { $('error').textContent = String(e?.message ?? e); status('Failed.'); console.error(e); };
const progress = (v, max) => { $('progress').max = max || 1; $('progress').value = v; };
let gpu = null, model = null, last = null, unet = null; // unet: reads the UNet again (LoRAs)

/** Clear message when the browser cannot run WebGPU at all. */
async function checkWebGpu() {
  if (!navigator.gpu) throw new Error(wasm.no_webgpu_message());
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error('WebGPU is present but no GPU adapter is available (blocklisted GPU or disabled). '
      + 'Check chrome://gpu; on Linux start Chrome with --enable-unsafe-webgpu.');
  }
  const i = adapter.info || {};
  return `${i.vendor || '?'} ${i.architecture || ''} ${i.description || ''}`.trim()
    + `, shader-f16 ${adapter.features.has('shader-f16') ? 'yes' : 'no (f32 kernels)'}`
    + `, maxBufferSize ${adapter.limits.maxBufferSize >> 20} MiB`;
}

async function start() {
  await init();
  const info = await checkWebGpu();
  gpu = await wasm.Pigment.open(true);
  $('adapter').textContent = `WebGPU adapter: ${info}`;
  window.pigmentAdapter = { page: info, wgpu: JSON.parse(gpu.adapter()) };
  status('Ready: load a model.');
  const q = new URLSearchParams(location.search);
  if (q.get('model')) {
    $('model-url').value = q.get('model');
    if (q.get('config')) $('config-url').value = q.get('config');
    load({ url: q.get('model'), configUrl: q.get('config'), fp16: q.get('fp16') === '1' });
  }
}

async function load(source) {
  $('error').textContent = '';
  $('generate').disabled = true;
  model?.free();
  model = null;
  unet = null;
  const t0 = performance.now();
  try {
    const r = await loadModel(wasm, gpu, source, (what, l, t) => {
      status(t ? `${what}: ${(l / 2 ** 20).toFixed(1)} / ${(t / 2 ** 20).toFixed(1)} MiB` : what);
      progress(l || 0, t || 1);
    });
    model = r.model;
    unet = r.unet;
    // the LoRAs, embeddings and TAESD added so far; one that does not fit this model is reported
    // but does not unload it
    await extras.attach(model).catch((e) => fail(`extras: ${e.message ?? e}`));
    progress(1, 1);
    status(`Model ${r.name}${model.is_sdxl() ? ' (SDXL)' : ''} loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s `
      + `(${r.downloaded} files downloaded, ${r.fromCache} from the browser cache).`);
    document.body.dataset.model = 'loaded';
    $('generate').disabled = false;
  } catch (e) { fail(e); }
}

function options() {
  return {
    prompt: $('prompt').value, negativePrompt: $('negative').value,
    seed: Number($('seed').value), steps: Number($('steps').value), guidance: Number($('guidance').value),
    sampler: $('sampler').value, schedule: $('schedule').value,
    width: Number($('width').value), height: Number($('height').value), clipSkip: Number($('clip-skip').value),
    previewEvery: Number($('preview-every').value),
    strength: Number($('strength').value), maskBlur: Number($('mask-blur').value),
    ...extras.options(),
  };
}

function draw(rgba, w, h) {
  const c = $('canvas');
  c.width = w;
  c.height = h;
  c.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer), w, h), 0, 0);
}

async function generate() {
  const o = options();
  $('error').textContent = '';
  $('generate').disabled = true;
  $('download').disabled = true;
  $('send-to-img2img').disabled = true;
  delete document.body.dataset.done;
  delete document.body.dataset.previews;
  const t0 = performance.now();
  try {
    status('Encoding the prompt (the first run also compiles the shaders)…');
    progress(0, 1);
    const [init, mask] = img2img.inputs(o.width, o.height);
    const kind = { img2img: init !== undefined, inpaint: mask !== undefined };
    const onStep = (i, n) => {
      progress(i, n + 1);
      status(`Step ${i} / ${n} (${((performance.now() - t0) / 1000).toFixed(1)} s)` + (i === n ? ', decoding…' : ''));
    };
    const onPreview = (preview, w, h) => {
      // the VAE decode of the latents so far (one decode per preview)
      draw(preview, w, h);
      window.pigmentPreview = { rgba: preview, width: w, height: h }; // the last one, for tests
      document.body.dataset.previews = String(Number(document.body.dataset.previews || 0) + 1);
    };
    if (server.enabled()) {
      const r = await server.generate(o, init, mask, onStep, onPreview);
      draw(r.rgba, r.width, r.height);
      last = { o, parameters: r.parameters };
    } else {
      if (!model) throw new Error('load a model first (or turn on server mode)');
      const json = JSON.stringify(o);
      const warnings = await extras.merge(model, json, unet, status);
      if (warnings.length) console.warn(warnings.join('\n'));
      status('Encoding the prompt…');
      // hires makes a larger image than the form's size
      const [w, h] = model.output_size(json);
      const rgba = await model.generate(json, onStep, (i, preview, pw, ph) => onPreview(preview, pw, ph), init, mask);
      draw(rgba, w, h);
      last = { o, parameters: model.parameters(json, kind.img2img, kind.inpaint) };
    }
    progress(1, 1);
    status(`Done in ${((performance.now() - t0) / 1000).toFixed(1)} s (seed ${o.seed}).`);
    document.body.dataset.done = String(Date.now());
    $('download').disabled = false;
    $('send-to-img2img').disabled = false;
  } catch (e) { fail(e); }
  $('generate').disabled = false;
}

// PNG with A1111's `parameters` tEXt chunk (as the CLI writes), inserted after IHDR.
const CRC = Array.from({ length: 256 }, (_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c >>> 0; });
const crc32 = (b) => { let c = ~0; for (const x of b) c = CRC[(c ^ x) & 255] ^ (c >>> 8); return ~c >>> 0; };
function withText(png, key, text) {
  const data = new Uint8Array([...new TextEncoder().encode(key), 0, ...Array.from(text, (ch) => ch.charCodeAt(0) & 255)]);
  const chunk = new Uint8Array(12 + data.length);
  const v = new DataView(chunk.buffer);
  v.setUint32(0, data.length);
  chunk.set(new TextEncoder().encode('tEXt'), 4);
  chunk.set(data, 8);
  v.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
  const at = 8 + 25; // signature + IHDR
  return new Blob([png.subarray(0, at), chunk, png.subarray(at)], { type: 'image/png' });
}

async function download() {
  const blob = await new Promise((ok) => $('canvas').toBlob(ok, 'image/png'));
  const png = withText(new Uint8Array(await blob.arrayBuffer()), 'parameters', last.parameters);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(png);
  a.download = `pigment-${last.o.seed}.png`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

$('load-url').onclick = () => load({ url: $('model-url').value.trim(), configUrl: $('config-url').value.trim() || null, fp16: $('fp16-files').checked });
$('files').onchange = (e) => e.target.files.length && load({ files: e.target.files, configUrl: $('config-url').value.trim() || null });
$('folder').onchange = (e) => e.target.files.length && load({ files: e.target.files });
$('generate').onclick = generate;
$('download').onclick = download;
$('send-to-img2img').onclick = () => {
  // a copy: the result canvas is redrawn by the next generation
  const c = document.createElement('canvas');
  c.width = $('canvas').width;
  c.height = $('canvas').height;
  c.getContext('2d').drawImage($('canvas'), 0, 0);
  img2img.setInit(c);
};
img2img.setup(fail);
extras.setup(wasm, () => model, fail);
server.setup((on) => { $('generate').disabled = !on && !model; });
$('random-seed').onclick = () => { $('seed').value = Math.floor(Math.random() * 2 ** 32); };
$('clear-cache').onclick = async () => { await clearCache(); status('Downloaded models removed from the browser cache.'); };
start().catch(fail);
