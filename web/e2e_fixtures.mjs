// Files the page's extras test (e2e_extras.mjs) writes for itself: safetensors from raw bytes,
// seeded random values, and a small TAESD decoder. `node web/e2e_fixtures.mjs taesd DIR` writes
// that TAESD folder, for the CLI that made golden/taesd/page_preview.png (see e2e_extras.mjs).
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** A safetensors file from `[name, dtype, shape, bytes]` entries. */
export function safetensors(tensors) {
  const header = {};
  let off = 0;
  for (const [name, dtype, shape, bytes] of tensors) {
    header[name] = { dtype, shape, data_offsets: [off, off + bytes.length] };
    off += bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...tensors.map((t) => Buffer.from(t[3]))]);
}

export function readSafetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString()), data: buf.subarray(8 + n) };
}

/** Seeded N(0, 1) values (mulberry32 + Box-Muller) as f32 bytes, scaled by `gain`. */
export function randn(count, seed, gain) {
  let a = seed >>> 0;
  const u = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296; };
  const v = new Float32Array(count);
  for (let i = 0; i < count; i++) v[i] = gain * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return new Uint8Array(v.buffer);
}

/** A small AutoencoderTiny decoder (8 channels, one block per stage, random weights): the
 *  layout of diffusers' DecoderTiny, so the page's TAESD path runs with a file this test owns. */
export async function writeTaesd(dir) {
  const C = 8, config = { _class_name: 'AutoencoderTiny', decoder_block_out_channels: [C, C, C, C], num_decoder_blocks: [1, 1, 1, 1], latent_channels: 4 };
  const t = [];
  let seed = 1;
  const conv = (p, cout, cin, k, bias) => {
    t.push([`${p}.weight`, 'F32', [cout, cin, k, k], randn(cout * cin * k * k, seed++, 1 / Math.sqrt(cin * k * k))]);
    if (bias) t.push([`${p}.bias`, 'F32', [cout], randn(cout, seed++, 0.1)]);
  };
  let i = 0;
  conv(`decoder.layers.${i}`, C, 4, 3, true);
  i += 2; // a ReLU follows
  for (let s = 0; s < 4; s++) {
    for (const c of [0, 2, 4]) conv(`decoder.layers.${i}.conv.${c}`, C, C, 3, true);
    i += s < 3 ? 2 : 1; // the block, then an upsample except after the last
    conv(`decoder.layers.${i}`, s < 3 ? C : 3, C, 3, s === 3);
    i += 1;
  }
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
  await fs.writeFile(path.join(dir, 'diffusion_pytorch_model.safetensors'), safetensors(t));
  return [path.join(dir, 'config.json'), path.join(dir, 'diffusion_pytorch_model.safetensors')];
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === 'taesd') {
  console.log((await writeTaesd(process.argv[3])).join('\n'));
}
