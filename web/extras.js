// The page's extras: LoRA files with weights, textual-inversion embeddings, TAESD previews and
// the hires fix. Files (picked or by URL) are kept as Blobs here and handed to every model that
// is loaded (`attach`); LoRAs are merged just before a generation that changes them (`merge`).
import { fetchBlob, toWasm, blobReader } from './model.js';

const $ = (id) => document.getElementById(id);
const loras = new Map(); // name -> Blob (the row in #lora-list holds the weight)
const embeddings = new Map(); // word -> Blob
let taesd = null; // { blob, config: text or null, name }
let wasm = null, fail = null, getModel = () => null;

const stem = (n) => n.split(/[/\\]/).pop().replace(/\.safetensors$/i, '');
const bytesOf = (blob) => toWasm(wasm, blob.size, blobReader(blob));

/** A file from a URL (kept in the Cache API as the model files are). */
const fromUrl = async (url) => (await fetchBlob(url)).blob;

function showLoras() {
  const list = $('lora-list');
  for (const row of [...list.children]) if (!loras.has(row.dataset.name)) row.remove();
  for (const name of loras.keys()) {
    if ([...list.children].some((r) => r.dataset.name === name)) continue;
    const row = document.createElement('div');
    row.dataset.name = name;
    row.className = 'lora';
    row.innerHTML = '<code></code> weight <input type="number" class="lora-weight" value="1" step="0.05"> <button>remove</button>';
    row.querySelector('code').textContent = name;
    row.querySelector('button').onclick = () => { loras.delete(name); getModel()?.remove_lora(name); showLoras(); };
    list.append(row);
  }
  $('lora-none').hidden = loras.size > 0;
}

function showEmbeddings() {
  $('embedding-list').textContent = embeddings.size
    ? `Embeddings (use the word in the prompt): ${[...embeddings.keys()].join(', ')}`
    : 'No embeddings.';
}

function showTaesd(text) {
  $('taesd-status').textContent = text ?? (taesd ? `TAESD: ${taesd.name}` : 'No TAESD weights (preview "taesd" needs them).');
}

async function addLora(name, blob) {
  const m = getModel();
  if (m) m.add_lora(name, await bytesOf(blob)); // parses it now: a file that is no LoRA fails here
  loras.set(name, blob);
  showLoras();
}

async function addEmbedding(name, blob) {
  const m = getModel();
  if (m) m.add_embedding(name, await bytesOf(blob));
  embeddings.set(name, blob);
  showEmbeddings();
}

async function setTaesd(t) {
  const m = getModel();
  if (m) m.set_taesd(await bytesOf(t.blob), t.config);
  taesd = t;
  showTaesd();
}

/** Hand the extras to a model that was just loaded (its predecessor had them). */
export async function attach(model) {
  for (const [name, blob] of loras) model.add_lora(name, await bytesOf(blob));
  for (const [name, blob] of embeddings) model.add_embedding(name, await bytesOf(blob));
  if (taesd) model.set_taesd(await bytesOf(taesd.blob), taesd.config);
}

/** The options' extras: `{ loras, preview, hires }`. */
export function options() {
  const rows = [...$('lora-list').children];
  const o = {
    loras: rows.map((r) => ({ name: r.dataset.name, weight: Number(r.querySelector('.lora-weight').value) })),
    preview: $('preview').value,
  };
  if ($('hires-on').checked) {
    o.hires = {
      scale: Number($('hires-scale').value), steps: Number($('hires-steps').value),
      denoise: Number($('hires-denoise').value), upscaler: $('hires-upscaler').value,
    };
  }
  return o;
}

/** Merge the LoRAs `json` asks for when they changed, reading the UNet again (`unet` from
 *  loadModel) for it; returns the merge's warnings. */
export async function merge(model, json, unet, report) {
  if (!model.loras_pending(json)) return [];
  if (!unet) throw new Error('LoRAs need the UNet\'s weights file, and this model has none to read again');
  report('Merging LoRAs: reading the UNet again…');
  const u = await unet((what, l, t) => report(`${what}: ${(l / 2 ** 20).toFixed(1)} / ${(t / 2 ** 20).toFixed(1)} MiB`));
  report('Merging LoRAs…');
  return JSON.parse(model.apply_loras(json, u.bytes, u.name, u.single));
}

/** TAESD from picked files: a diffusers folder's config.json + .safetensors, or one .safetensors. */
async function taesdFromFiles(files) {
  const st = files.find((f) => /\.safetensors$/i.test(f.name));
  if (!st) throw new Error('TAESD: pick its .safetensors (and the config.json beside it)');
  const cfg = files.find((f) => f.name === 'config.json');
  return { blob: st, config: cfg ? await cfg.text() : null, name: st.webkitRelativePath || st.name };
}

/** TAESD from a URL: a `.safetensors` file, or a diffusers AutoencoderTiny folder. */
async function taesdFromUrl(url) {
  url = url.replace(/\/+$/, '');
  if (/\.safetensors$/i.test(url)) return { blob: await fromUrl(url), config: null, name: url };
  let config = null;
  try { config = await (await fromUrl(`${url}/config.json`)).text(); } catch { /* inferred from the tensors */ }
  return { blob: await fromUrl(`${url}/diffusion_pytorch_model.safetensors`), config, name: url };
}

export function setup(wasmModule, currentModel, onError) {
  wasm = wasmModule;
  getModel = currentModel;
  fail = onError;
  const guard = (what, f) => async (e) => {
    $('error').textContent = '';
    try { await f(e); } catch (err) { fail(`${what}: ${err.message ?? err}`); }
  };
  $('lora-files').onchange = guard('LoRA', async (e) => {
    for (const f of e.target.files) await addLora(stem(f.name), f);
    e.target.value = '';
  });
  $('lora-add-url').onclick = guard('LoRA', async () => {
    const url = $('lora-url').value.trim();
    if (!url) throw new Error('give the URL of a LoRA .safetensors');
    await addLora(stem(url), await fromUrl(url));
  });
  $('embedding-files').onchange = guard('embedding', async (e) => {
    for (const f of e.target.files) await addEmbedding(stem(f.name), f);
    e.target.value = '';
  });
  $('embedding-add-url').onclick = guard('embedding', async () => {
    const url = $('embedding-url').value.trim();
    if (!url) throw new Error('give the URL of an embedding .safetensors');
    await addEmbedding(stem(url), await fromUrl(url));
  });
  $('taesd-files').onchange = guard('TAESD', async (e) => { await setTaesd(await taesdFromFiles([...e.target.files])); });
  $('taesd-load').onclick = guard('TAESD', async () => {
    const url = $('taesd-url').value.trim();
    if (!url) throw new Error('give the URL of a TAESD folder (diffusers AutoencoderTiny) or .safetensors');
    showTaesd('Loading TAESD…');
    try { await setTaesd(await taesdFromUrl(url)); } finally { showTaesd(); }
  });
  $('hires-on').onchange = () => { $('hires-fields').hidden = !$('hires-on').checked; };
  $('hires-fields').hidden = !$('hires-on').checked;
  showLoras();
  showEmbeddings();
  showTaesd();
}
