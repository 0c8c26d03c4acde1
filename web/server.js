// Server mode: Generate runs on a `pigment serve` (AUTOMATIC1111's API) instead of this
// browser's WebGPU, so a phone can use a desktop's GPU. The server must allow this page's
// origin (`pigment serve --cors-origin ORIGIN`). The form's options map onto
// /sdapi/v1/txt2img (img2img with an init image); /sdapi/v1/progress gives the progress bar and
// the previews while the request runs.
const $ = (id) => document.getElementById(id);
const KEY = 'pigment-server';

export const enabled = () => $('server-on').checked;

/** Restore the last URL (not the key) and call `changed` when the toggle flips. */
export function setup(changed) {
  try {
    const saved = JSON.parse(localStorage.getItem(KEY) || '{}');
    if (saved.url) $('server-url').value = saved.url;
  } catch { /* no storage: start empty */ }
  $('server-on').onchange = () => {
    $('server-fields').hidden = !enabled();
    changed(enabled());
  };
  $('server-url').onchange = () => {
    try { localStorage.setItem(KEY, JSON.stringify({ url: $('server-url').value.trim() })); } catch { /* not kept */ }
  };
  $('server-fields').hidden = !enabled();
}

function base() {
  const u = $('server-url').value.trim().replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+/.test(u)) throw new Error(`server URL "${u}": give the address of a pigment serve, e.g. http://192.168.1.5:7860`);
  return u;
}

async function call(path, body) {
  const headers = { 'Content-Type': 'application/json' };
  const key = $('server-key').value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  let r;
  try {
    r = await fetch(base() + path, body === undefined ? { headers } : { method: 'POST', headers, body: JSON.stringify(body) });
  } catch (e) {
    // a CORS refusal and an unreachable server look the same to the page
    throw new Error(`cannot reach ${base()}${path} (${e.message}): is pigment serve running there with --cors-origin ${location.origin} ?`);
  }
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`server: ${r.status} ${v.detail ?? v.error?.message ?? r.statusText}`);
  return v;
}

async function pngOf(rgba, w, h) {
  const c = new OffscreenCanvas(w, h);
  c.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer), w, h), 0, 0);
  const bytes = new Uint8Array(await (await c.convertToBlob({ type: 'image/png' })).arrayBuffer());
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** A base64 PNG as RGBA bytes and its size (no colour conversion, as the goldens are read). */
async function rgbaOf(b64) {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  const bmp = await createImageBitmap(new Blob([bytes], { type: 'image/png' }), { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  c.getContext('2d').drawImage(bmp, 0, 0);
  return { rgba: new Uint8Array(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data.buffer), width: bmp.width, height: bmp.height };
}

/**
 * Generate `o` (the page's options) on the server. `init`/`mask` are RGBA at the output size or
 * undefined; `step(i, n)` and `preview(rgba, w, h)` as the WebGPU path. Resolves to
 * `{ rgba, width, height, parameters }` (the server's infotext).
 */
export async function generate(o, init, mask, step, preview) {
  const body = {
    prompt: o.prompt, negative_prompt: o.negativePrompt, seed: o.seed, steps: o.steps, cfg_scale: o.guidance,
    sampler_name: o.sampler, scheduler: o.schedule, width: o.width, height: o.height, clip_skip: o.clipSkip,
  };
  // The page's LoRA list as A1111 prompt tags: the server finds them by name in its --lora-dir.
  for (const l of o.loras || []) body.prompt += ` <lora:${l.name}:${l.weight}>`;
  if (o.hires) {
    const upscaler = { latent: 'Latent', 'latent-nearest': 'Latent (nearest)', lanczos: 'Lanczos' }[o.hires.upscaler] ?? o.hires.upscaler;
    Object.assign(body, { enable_hr: true, hr_scale: o.hires.scale, hr_second_pass_steps: o.hires.steps, denoising_strength: o.hires.denoise, hr_upscaler: upscaler });
  }
  if (init) {
    body.init_images = [await pngOf(init, o.width, o.height)];
    body.denoising_strength = o.strength;
    if (mask) {
      body.mask = await pngOf(mask, o.width, o.height);
      body.mask_blur = o.maskBlur;
    }
  }
  let done = false, shown = null;
  const poll = (async () => {
    while (!done) {
      await new Promise((ok) => setTimeout(ok, 300));
      if (done) break;
      try {
        const p = await call('/sdapi/v1/progress');
        if (p.state?.sampling_steps) step(p.state.sampling_step, p.state.sampling_steps);
        if (p.current_image && p.current_image !== shown && !done) {
          shown = p.current_image;
          const img = await rgbaOf(shown);
          if (!done) preview(img.rgba, img.width, img.height);
        }
      } catch { /* a missed poll only delays the bar */ }
    }
  })();
  try {
    const r = await call(init ? '/sdapi/v1/img2img' : '/sdapi/v1/txt2img', body);
    if (!r.images?.length) throw new Error('server: the answer holds no image');
    const img = await rgbaOf(r.images[0]);
    let parameters = '';
    try { parameters = JSON.parse(r.info).infotexts[0]; } catch { /* keep the PNG's text empty */ }
    return { ...img, parameters };
  } finally {
    done = true;
    await poll;
  }
}
