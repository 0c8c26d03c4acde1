// A tiny static server for the page: `node web/serve.mjs [port]` serves the repository root
// (the page at /web/, the test models at /tests/fixtures/) on 127.0.0.1. WebGPU and the Cache
// API need a secure context, which http://127.0.0.1 and http://localhost are.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.css': 'text/css', '.json': 'application/json', '.wasm': 'application/wasm', '.png': 'image/png',
  '.txt': 'text/plain; charset=utf-8', '.safetensors': 'application/octet-stream',
};

/** Serve `root`; `hits` counts requests per path (the e2e test checks reloads use the cache).
 *  `mounts`: URL prefix (`/name/`) → another folder served there (fixtures written under
 *  CARGO_TARGET_DIR, which may lie outside the repository). */
export function serve(root, port = 0, mounts = {}) {
  const hits = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const prefix = Object.keys(mounts).find((m) => url.pathname.startsWith(m));
    const base = prefix ? path.resolve(mounts[prefix]) : root;
    const rel = path.normalize(decodeURIComponent(prefix ? url.pathname.slice(prefix.length - 1) : url.pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = path.join(base, rel);
    hits.set(url.pathname, (hits.get(url.pathname) || 0) + 1);
    if (!file.startsWith(base)) { res.writeHead(403).end(); return; }
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) { res.writeHead(404).end('not found'); return; }
      res.writeHead(200, {
        'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream',
        'Content-Length': st.size,
        'Cache-Control': 'no-store',
      });
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((ok) => server.listen(port, '127.0.0.1', () => ok({ server, hits, port: server.address().port })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const { port } = await serve(root, Number(process.argv[2] || 8080));
  console.log(`http://127.0.0.1:${port}/web/  (serving ${root})`);
}
