// Shared by the page's end-to-end tests (e2e.mjs, e2e_server.mjs): waiting on the page, and the
// canvas against a golden PNG.

/** Wait until `fn` is truthy in the page; on timeout the error names `what` and the page's status. */
export async function waitFor(page, what, fn, timeout = 300e3) {
  try {
    await page.waitForFunction(fn, null, { timeout, polling: 250 });
  } catch (e) {
    const s = await page.evaluate(() => `${document.getElementById('status')?.textContent} ${document.getElementById('error')?.textContent}`);
    throw new Error(`${what}: ${e.message.split('\n')[0]}; page says: ${s}`);
  }
}

/** The canvas against the PNG at `golden` (a URL of the page's server): [mean, max] absolute
 *  RGB difference in levels (Infinity when the sizes differ) and the progress bar's fill. */
export function canvasVsGolden(page, golden) {
  return page.evaluate(async (golden) => {
    const c = document.getElementById('canvas');
    const got = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const bmp = await createImageBitmap(await (await fetch(golden)).blob(), { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const oc = new OffscreenCanvas(bmp.width, bmp.height);
    oc.getContext('2d').drawImage(bmp, 0, 0);
    const want = oc.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data;
    if (want.length !== got.length) return [Infinity, Infinity, 0];
    let sum = 0, max = 0, n = 0;
    for (let i = 0; i < got.length; i++) {
      if (i % 4 === 3) continue;
      const d = Math.abs(got[i] - want[i]);
      sum += d; max = Math.max(max, d); n++;
    }
    const p = document.getElementById('progress');
    return [sum / n, max, p.value / p.max];
  }, golden);
}

/** The goldens' settings in the form (make_fixtures.py's prompt, seed 42, cfg 7.5, 64x64). */
export async function fillForm(page, sampler, { steps, strength }) {
  await page.fill('#prompt', 'a photograph of an astronaut riding a horse');
  await page.fill('#negative', 'blurry, low quality');
  await page.fill('#seed', '42');
  await page.fill('#steps', String(steps));
  await page.fill('#strength', String(strength));
  await page.fill('#guidance', '7.5');
  await page.selectOption('#sampler', sampler);
  await page.fill('#width', '64');
  await page.fill('#height', '64');
}
