// The page's img2img and inpainting inputs: an init image (a file, or a result sent over) and a
// mask painted with a brush over it or read from a file. Both are handed to wasm as RGBA at the
// output size (the browser's own resampling when the sizes differ; the CLI uses Lanczos).
const $ = (id) => document.getElementById(id);
let init = null; // ImageBitmap or canvas at its own size
let masked = false; // anything painted or loaded

const bitmap = async (blob) => createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });

function show() {
  const has = init !== null;
  $('init-wrap').hidden = !has;
  $('init-status').textContent = has
    ? `Init image ${init.width}x${init.height}: img2img${masked ? ' with the mask (inpainting)' : ''}; paint the mask below.`
    : 'No init image: the form makes txt2img images.';
}

/** Make `source` (anything drawImage takes) the init image; the mask starts empty. */
export function setInit(source) {
  init = source;
  for (const c of [$('init-canvas'), $('mask-canvas')]) {
    c.width = source.width;
    c.height = source.height;
  }
  $('init-canvas').getContext('2d').drawImage(source, 0, 0);
  clearMask();
}

export function clearMask() {
  const m = $('mask-canvas');
  m.getContext('2d').clearRect(0, 0, m.width, m.height);
  masked = false;
  show();
}

/** The image drawn at w x h as RGBA bytes; the mask on black (unpainted = keep). */
function rgbaAt(source, w, h, background) {
  const c = new OffscreenCanvas(w, h);
  const g = c.getContext('2d');
  if (background) {
    g.fillStyle = background;
    g.fillRect(0, 0, w, h);
  }
  g.imageSmoothingQuality = 'high';
  g.drawImage(source, 0, 0, w, h);
  return new Uint8Array(g.getImageData(0, 0, w, h).data.buffer);
}

/** What the wasm `generate` takes besides the options: [init, mask], each RGBA or undefined. */
export function inputs(w, h) {
  if (!init) return [undefined, undefined];
  return [rgbaAt(init, w, h), masked ? rgbaAt($('mask-canvas'), w, h, '#000') : undefined];
}

export const hasInit = () => init !== null;
export const hasMask = () => init !== null && masked;

function paint(e) {
  const m = $('mask-canvas');
  const r = m.getBoundingClientRect();
  const x = (e.clientX - r.left) * (m.width / r.width);
  const y = (e.clientY - r.top) * (m.height / r.height);
  const g = m.getContext('2d');
  g.fillStyle = '#fff';
  g.beginPath();
  g.arc(x, y, Number($('brush').value) / 2, 0, 2 * Math.PI);
  g.fill();
  if (!masked) {
    masked = true;
    show();
  }
}

export function setup(fail) {
  $('init-file').onchange = async (e) => {
    try { if (e.target.files.length) setInit(await bitmap(e.target.files[0])); } catch (err) { fail(`init image: ${err.message ?? err}`); }
  };
  $('mask-file').onchange = async (e) => {
    try {
      if (!e.target.files.length) return;
      if (!init) throw new Error('choose an init image first: a mask says which part of it to repaint');
      const bmp = await bitmap(e.target.files[0]);
      const m = $('mask-canvas');
      m.getContext('2d').drawImage(bmp, 0, 0, m.width, m.height);
      masked = true;
      show();
    } catch (err) { fail(`mask: ${err.message ?? err}`); }
  };
  $('clear-init').onclick = () => { init = null; masked = false; $('init-file').value = ''; $('mask-file').value = ''; show(); };
  $('clear-mask').onclick = () => { $('mask-file').value = ''; clearMask(); };
  const m = $('mask-canvas');
  let down = false;
  m.onpointerdown = (e) => {
    down = true;
    paint(e);
    // keep the stroke when the pointer leaves the canvas mid-drag (not every pointer can be captured)
    try { m.setPointerCapture(e.pointerId); } catch { /* painting works without it */ }
  };
  m.onpointermove = (e) => { if (down) paint(e); };
  m.onpointerup = () => { down = false; };
  show();
}
