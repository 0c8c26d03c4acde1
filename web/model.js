// Model files for the page: fetched once with progress and kept in the Cache API (a reload does
// not download again), or picked by the user; handed to wasm one component at a time. A part's
// bytes sit in a JS Uint8Array (`wasm.Bytes`) while wasm copies its tensors in one by one and
// uploads them to GPU buffers, so wasm memory (4 GiB at most) never holds a whole part.

const CACHE = 'pigment-models-v1';
const CHUNK = 16 << 20; // bytes copied into wasm memory per step

/** A URL's contents as a Blob (disk-backed when it comes from the Cache API), `cached` when no
 *  download was needed. `onProgress(loaded, total)` while downloading. */
export async function fetchBlob(url, onProgress) {
  const abs = new URL(url, location.href).href;
  const cache = self.caches ? await caches.open(CACHE).catch(() => null) : null;
  if (cache) {
    const hit = await cache.match(abs);
    if (hit) return { blob: await hit.blob(), cached: true };
  }
  const resp = await fetch(abs);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status} ${resp.statusText}`);
  const total = Number(resp.headers.get('Content-Length')) || 0;
  let loaded = 0;
  const counted = resp.body.pipeThrough(new TransformStream({
    transform(chunk, ctl) { loaded += chunk.byteLength; onProgress?.(loaded, total); ctl.enqueue(chunk); },
  }));
  if (cache) {
    try {
      // Streamed straight into the cache: the download is never held whole in the JS heap.
      await cache.put(abs, new Response(counted, { headers: { 'Content-Type': 'application/octet-stream' } }));
      return { blob: await (await cache.match(abs)).blob(), cached: false };
    } catch (e) {
      console.warn(`not cached (${e.message}); keeping ${url} in memory`);
      return fetchBlob.uncached(abs, onProgress);
    }
  }
  return { blob: await new Response(counted).blob(), cached: false };
}
fetchBlob.uncached = async (url, onProgress) => {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return { blob: await resp.blob(), cached: false };
};

/** Optional files (configs): null on 404. */
async function fetchOptionalText(url) {
  try { return await (await fetchBlob(url)).blob.text(); } catch { return null; }
}

export async function clearCache() {
  if (self.caches) await caches.delete(CACHE);
}

/** Copy `size` bytes produced by `read(offset, len)` into a new `Bytes` (JS heap), in chunks. */
export async function toWasm(wasm, size, read, onProgress) {
  const bytes = new wasm.Bytes(size);
  for (let off = 0; off < size; off += CHUNK) {
    const part = await read(off, Math.min(CHUNK, size - off));
    bytes.write(off, part);
    onProgress?.(off + part.length, size);
  }
  return bytes;
}

export const blobReader = (blob) => async (off, len) => new Uint8Array(await blob.slice(off, off + len).arrayBuffer());

/** Original-layout key prefixes of each component of a single-file checkpoint. */
// UNet first: the biggest part takes wasm memory while it is still empty; the later parts reuse
// the freed space, so the peak is the UNet alone.
// SDXL's two text encoders are conditioner.embedders.0 (CLIP ViT-L) and .1 (OpenCLIP bigG).
const SINGLE_PARTS = [['unet', 'model.diffusion_model.'], ['vae', 'first_stage_model.'], ['text_encoder', 'cond_stage_model.'],
  ['text_encoder', 'conditioner.embedders.0.'], ['text_encoder_2', 'conditioner.embedders.1.']];
const PARTS = ['unet', 'vae', 'text_encoder', 'text_encoder_2']; // the loading order (see above)
// model_index.json first: the SDXL files are not asked for when it does not list text_encoder_2.
const CONFIGS = [['model_index', 'model_index.json'], ['text_encoder', 'text_encoder/config.json'],
  ['text_encoder_2', 'text_encoder_2/config.json'], ['unet', 'unet/config.json'], ['vae', 'vae/config.json'],
  ['scheduler', 'scheduler/scheduler_config.json'], ['tokenizer', 'tokenizer/tokenizer_config.json'],
  ['tokenizer_2', 'tokenizer_2/tokenizer_config.json']];

async function safetensorsHeader(blob) {
  if (blob.size < 8) throw new Error('not a safetensors file (shorter than 8 bytes)');
  const n = Number(new DataView(await blob.slice(0, 8).arrayBuffer()).getBigUint64(0, true));
  if (n > 100e6 || 8 + n > blob.size) throw new Error('not a safetensors file (bad header length)');
  return { header: JSON.parse(await blob.slice(8, 8 + n).text()), base: 8 + n };
}

/** The tensors of a single file whose names start with `prefix`, as a smaller safetensors file
 *  (only that component's bytes are read from the Blob). */
async function subFile(wasm, blob, parsed, prefix, onProgress) {
  const entries = Object.entries(parsed.header)
    .filter(([k]) => k.startsWith(prefix))
    .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  if (!entries.length) return null;
  const header = {};
  const ranges = []; // [srcStart, srcEnd) in the big file, merged when contiguous
  let off = 0;
  for (const [k, v] of entries) {
    const [s, e] = v.data_offsets;
    header[k] = { dtype: v.dtype, shape: v.shape, data_offsets: [off, off + e - s] };
    off += e - s;
    const last = ranges[ranges.length - 1];
    if (last && last[1] === parsed.base + s) last[1] = parsed.base + e;
    else ranges.push([parsed.base + s, parsed.base + e]);
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  json = padded;
  const size = 8 + json.length + off;
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  head.set(json, 8);
  // Map an offset in the new file to reads from the big one.
  const read = async (o, len) => {
    const out = new Uint8Array(len);
    let w = 0;
    while (w < len) {
      let p = o + w;
      if (p < head.length) { const n = Math.min(head.length - p, len - w); out.set(head.subarray(p, p + n), w); w += n; continue; }
      p -= head.length;
      let acc = 0;
      for (const [s, e] of ranges) {
        if (p < acc + (e - s)) {
          const from = s + (p - acc), n = Math.min(e - from, len - w);
          out.set(new Uint8Array(await blob.slice(from, from + n).arrayBuffer()), w);
          w += n;
          break;
        }
        acc += e - s;
      }
    }
    return out;
  };
  return toWasm(wasm, size, read, onProgress);
}

/** Where a model comes from: `{ url }` (a diffusers folder URL or a `.safetensors` URL, plus an
 *  optional `configUrl` folder for single files) or `{ files }` (picked File objects). Resolves
 *  to `{ model, name, downloaded, fromCache, unet }`: `unet(report)` reads the UNet's file again
 *  (from the Cache API or the picked File) as `{ bytes, name, single }` for `Model.apply_loras`,
 *  the model itself keeping no copy of it. */
export async function loadModel(wasm, gpu, source, report) {
  const f16 = true;
  const loader = gpu.loader();
  let downloaded = 0, fromCache = 0;
  let unet = null; // how to read the UNet again
  const get = async (what, url) => {
    const { blob, cached } = await fetchBlob(url, (l, t) => report(`downloading ${what}`, l, t));
    cached ? fromCache++ : downloaded++;
    return blob;
  };
  let index = null; // model_index.json: which components a folder has
  const setConfigs = async (text) => {
    for (const [part, file] of CONFIGS) {
      if (part.endsWith('_2') && index && !index.text_encoder_2) continue;
      const t = await text(file);
      if (t == null) continue;
      loader.set_config(part, t);
      if (part === 'model_index') index = JSON.parse(t);
    }
  };
  const single = async (name, blob) => {
    const parsed = await safetensorsHeader(blob);
    if (parsed.header && Object.keys(parsed.header).some((k) => k.startsWith(SINGLE_PARTS[0][1]))) {
      unet = async (r) => ({ bytes: await subFile(wasm, blob, parsed, SINGLE_PARTS[0][1], (l, t) => r?.('reading unet', l, t)), name: `${name} (unet)`, single: true });
    }
    let any = false;
    for (const [part, prefix] of SINGLE_PARTS) {
      const bytes = await subFile(wasm, blob, parsed, prefix, (l, t) => report(`reading ${part}`, l, t));
      if (!bytes) continue;
      report(`uploading ${part} to the GPU`);
      loader.add_single_file(`${name} (${part})`, bytes, f16);
      any = true;
    }
    if (!any) throw new Error(`${name}: no Stable Diffusion tensors (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, conditioner.embedders.*)`);
  };
  let name;
  if (source.url) {
    const url = source.url.replace(/\/+$/, '');
    name = url.split('/').pop().replace(/\.safetensors$/, '');
    if (/\.safetensors$/i.test(url)) {
      if (source.configUrl) {
        const base = source.configUrl.replace(/\/+$/, '');
        await setConfigs((f) => fetchOptionalText(`${base}/${f}`));
      }
      await single(name, await get('checkpoint', url));
    } else {
      await setConfigs((f) => fetchOptionalText(`${url}/${f}`));
      const suffix = source.fp16 ? 'fp16.safetensors' : 'safetensors';
      // SDXL's text_encoder_2 when model_index.json lists it
      for (const part of PARTS.filter((p) => p !== 'text_encoder_2' || index?.text_encoder_2)) {
        const file = part.startsWith('text_encoder') ? 'model' : 'diffusion_pytorch_model';
        const at = `${url}/${part}/${file}.${suffix}`;
        const blob = await get(part, at);
        if (part === 'unet') {
          // from the Cache API entry again (fetchBlob downloads only when it could not cache)
          unet = async (r) => {
            const b = (await fetchBlob(at)).blob;
            return { bytes: await toWasm(wasm, b.size, blobReader(b), (l, t) => r?.('reading unet', l, t)), name: `${part}/${file}.${suffix}`, single: false };
          };
        }
        const bytes = await toWasm(wasm, blob.size, blobReader(blob), (l, t) => report(`reading ${part}`, l, t));
        report(`uploading ${part} to the GPU`);
        loader.add_component(part, `${part}/${file}.${suffix}`, bytes, f16);
      }
    }
  } else {
    // Picked files: a folder (paths like unet/diffusion_pytorch_model.safetensors) or loose
    // files; configs go by their folder name, other .safetensors files are single files.
    const files = [...source.files];
    const rel = (f) => (f.webkitRelativePath || f.name).split('/');
    const byPath = (want) => files.find((f) => rel(f).slice(-want.split('/').length).join('/') === want);
    if (source.configUrl) {
      const base = source.configUrl.replace(/\/+$/, '');
      await setConfigs((f) => fetchOptionalText(`${base}/${f}`));
    }
    await setConfigs(async (p) => (byPath(p) ? byPath(p).text() : null));
    const order = (f) => PARTS.indexOf(rel(f).slice(-2, -1)[0]);
    const weights = files.filter((f) => f.name.endsWith('.safetensors')).sort((a, b) => order(a) - order(b));
    if (!weights.length) throw new Error('no .safetensors file among the picked files');
    name = rel(weights[0])[0].replace(/\.safetensors$/, '');
    for (const f of weights) {
      const dir = rel(f).slice(-2, -1)[0];
      if (PARTS.includes(dir)) {
        if (dir === 'unet') unet = async (r) => ({ bytes: await toWasm(wasm, f.size, blobReader(f), (l, t) => r?.('reading unet', l, t)), name: rel(f).join('/'), single: false });
        const bytes = await toWasm(wasm, f.size, blobReader(f), (l, t) => report(`reading ${dir}`, l, t));
        report(`uploading ${dir} to the GPU`);
        loader.add_component(dir, rel(f).join('/'), bytes, f16);
      } else {
        await single(f.name, f);
      }
    }
  }
  return { model: loader.finish(name), name, downloaded, fromCache, unet };
}
