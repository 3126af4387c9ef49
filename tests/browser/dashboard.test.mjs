// The dashboard page in a real browser (Debian's Chromium, driven by playwright-core), reading
// it the way a person does: sign in, see the figures, see them move. Run by
// scripts/browser-test.sh, which starts the real server and passes:
//   JETSTREAM_BASE           http://127.0.0.1:PORT of a server on a fresh store
//   JETSTREAM_READ_TOKEN     a token with the read scope (what a person signs in with)
//   JETSTREAM_INGEST_TOKEN   a token with the ingest scope (to post the known events)
//   SCREENSHOT_DIR           where the screenshots go
//   CHROMIUM                 the browser (default /usr/bin/chromium)
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const BASE = need('JETSTREAM_BASE');
const READ = need('JETSTREAM_READ_TOKEN');
const INGEST = need('JETSTREAM_INGEST_TOKEN');
const SHOTS = process.env.SCREENSHOT_DIR || 'target/screenshots';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run scripts/browser-test.sh)`);
  return v;
}

const log = (msg) => console.log(msg);

// ---- the known events --------------------------------------------------------------------------

const PRODUCTS = [
  { id: 1, name: 'Espresso machine', category: 'Kitchen' },
  { id: 2, name: 'Trail running shoes', category: 'Outdoor' },
  { id: 3, name: 'Noise-cancelling headphones', category: 'Electronics' },
  { id: 4, name: 'Calibration kit', category: 'Electronics' },
];
// Amounts as exact decimal text; the last one has more digits than a double holds, so the page
// shows it right only if it never passes the figure through a JS number.
const SALES = [
  [1, 2, '599.98'],
  [1, 1, '299.99'],
  [2, 3, '389.85'],
  [2, 1, '129.95'],
  [3, 1, '349.00'],
  [3, 2, '698.00'],
  [4, 1, '0.1234567890123456789'],
];
const RATINGS = [
  [1, 5],
  [1, 4],
  [2, 3],
  [3, 5],
  [3, 4],
  [4, 2],
];

const product = (id) => PRODUCTS.find((p) => p.id === id);
const sale = (id, units, amount) => ({
  event_name: 'productSold',
  product_id: id,
  name_of_product: product(id).name,
  category: product(id).category,
  no_of_units: units,
  amount,
});

/** The exact sum of decimal texts, as a normalised decimal text (BigInt at a fixed scale). */
function decimalSum(texts) {
  const SCALE = 30;
  let total = 0n;
  for (const t of texts) {
    const [int, frac = ''] = t.split('.');
    total += BigInt(int + frac.padEnd(SCALE, '0'));
  }
  return normalise(`${total / 10n ** BigInt(SCALE)}.${(total % 10n ** BigInt(SCALE)).toString().padStart(SCALE, '0')}`);
}

/** A decimal text without trailing fractional zeros ("12.500" → "12.5", "3.0" → "3"). */
const normalise = (t) => (t.includes('.') ? t.replace(/0+$/, '').replace(/\.$/, '') : t);

async function post(events) {
  const r = await fetch(`${BASE}/api/v1/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${INGEST}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(events),
  });
  assert.ok(r.ok, `ingest answered ${r.status}: ${await r.text()}`);
}

// ---- the API, read independently of the page ---------------------------------------------------

/** The API's answer to `path` as text (numbers untouched). */
async function apiText(path) {
  const r = await fetch(`${BASE}${path}`, { headers: { Authorization: `Bearer ${READ}` } });
  const text = await r.text();
  assert.equal(r.status, 200, `${path}: ${text}`);
  return text;
}

/** The exact text of `result.<agg>` in an aggregate answer. */
function resultField(text, agg) {
  const result = /"result":\{([^}]*)\}/.exec(text);
  assert.ok(result, `no result in ${text}`);
  const m = new RegExp(`"${agg}":(null|-?[0-9][0-9.eE+-]*)`).exec(result[1]);
  assert.ok(m, `no ${agg} in ${text}`);
  return m[1];
}

/** The aggregate query an element's data attributes name. */
function pathOf({ metric, dim, value, window }) {
  const q = new URLSearchParams({ window });
  if (dim) q.set('dim', dim);
  if (dim) q.set('value', value);
  return `/api/v1/metrics/${encodeURIComponent(metric)}?${q}`;
}

/** Every figure on the page: its attributes and exact text. */
const figures = (page) =>
  page.$$eval('[data-exact]', (els) =>
    els.map((el) => ({
      metric: el.dataset.metric,
      dim: el.dataset.dim,
      value: el.dataset.value,
      window: el.dataset.window,
      agg: el.dataset.agg,
      exact: el.dataset.exact,
      id: el.id || el.closest('[id]')?.id,
    })),
  );

/**
 * Every figure equals the API's answer to the same query, compared as text. Trailing windows
 * move with the clock, so mismatches are asked again until `ms` pass (the page is pushed the new
 * answer within a second).
 */
async function assertFiguresMatchApi(page, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const figs = await figures(page);
    const wrong = [];
    for (const f of figs) {
      for (const key of ['metric', 'dim', 'value', 'window', 'agg']) {
        assert.notEqual(f[key], undefined, `a figure (${f.id}) has no data-${key}`);
      }
      const api = resultField(await apiText(pathOf(f)), f.agg);
      if (api !== f.exact) wrong.push(`${f.id} ${pathOf(f)} ${f.agg}: page ${f.exact}, API ${api}`);
    }
    if (!wrong.length) return figs;
    if (Date.now() > deadline) assert.fail(`figures differ from the API:\n${wrong.join('\n')}`);
    await page.waitForTimeout(250);
  }
}

// ---- the browser -------------------------------------------------------------------------------

let browser;
const consoleErrors = [];
const tokenInUrls = [];

function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(`${label}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${label}: uncaught ${e.message}`));
  page.on('request', (r) => {
    if (r.url().includes(READ)) tokenInUrls.push(r.url());
  });
  return page;
}

async function signIn(page) {
  await page.goto(`${BASE}/`);
  await page.fill('input[name="token"]', READ);
  await page.click('#sign-in-form button[type="submit"]');
  await page.waitForSelector('#dashboard', { state: 'visible' });
  await page.waitForSelector('#kpi-sales[data-exact]');
  await page.waitForSelector('#top-rows [data-exact]');
  await page.waitForSelector('#ratings [data-exact]');
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  log(`browser: Chromium ${browser.version()}`);
  await post([
    ...SALES.map(([id, units, amount]) => sale(id, units, amount)),
    ...RATINGS.map(([id, rating]) => ({
      event_name: 'productRated',
      product_id: id,
      name_of_product: product(id).name,
      category: product(id).category,
      rating,
    })),
  ]);
  // Committed when the API shows it.
  const want = decimalSum(SALES.map((s) => s[2]));
  const deadline = Date.now() + 10_000;
  while (normalise(resultField(await apiText('/api/v1/metrics/sales_amount?window=1h'), 'sum')) !== want) {
    assert.ok(Date.now() < deadline, 'the known events were not committed within 10 s');
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  await browser?.close();
});

let desktop;

test('the page loads without a token and signs in with one, which never goes in a URL', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  desktop = watch(await context.newPage(), 'desktop');
  const t0 = Date.now();
  await signIn(desktop);
  log(`signed in and first figures shown after ${Date.now() - t0} ms`);
  assert.equal(new URL(desktop.url()).search, '', 'nothing in the query string');
  assert.ok(!desktop.url().includes(READ));
  assert.equal(await desktop.evaluate(() => sessionStorage.getItem('jetstream.token')), READ);
  assert.equal(await desktop.evaluate(() => Object.keys(localStorage).length), 0, 'nothing in localStorage');
});

test('the figures are the known events, with product names', async () => {
  const exact = (sel) => desktop.$eval(sel, (el) => el.dataset.exact);
  assert.equal(normalise(await exact('#kpi-sales')), decimalSum(SALES.map((s) => s[2])));
  assert.equal(await exact('#kpi-sales-count'), String(SALES.length));
  assert.equal(await exact('#kpi-units'), String(SALES.reduce((n, s) => n + s[1], 0)));
  // The sum has 23 significant digits: shown to the cent, rounded in decimal, and in full in
  // its tooltip (a double would have lost the last seven).
  const [text, title] = await desktop.$eval('#kpi-sales', (el) => [el.textContent, el.title]);
  assert.equal(text, '2,466.89');
  assert.equal(title.replaceAll(',', ''), decimalSum(SALES.map((s) => s[2])));

  const top = await desktop.$$eval('#top-rows tr', (rows) =>
    rows.map((r) => [r.dataset.product, r.querySelector('.name').textContent]),
  );
  assert.deepEqual(
    top.map((r) => r[0]),
    ['3', '1', '2', '4'],
    'top products by sales, highest first',
  );
  for (const [id, name] of top) assert.ok(name.startsWith(product(Number(id)).name), `${id} is named: ${name}`);

  const ratings = await desktop.$$eval('#ratings li', (lis) =>
    lis.map((li) => [li.querySelector('.name').textContent, li.querySelector('[data-agg="avg"]').dataset.exact]),
  );
  assert.deepEqual(ratings.map((r) => r[0]), ['Electronics', 'Kitchen', 'Outdoor']);
  assert.equal(Number(ratings.find((r) => r[0] === 'Kitchen')[1]), 4.5);
  assert.match(await desktop.$eval('#freshness', (el) => el.textContent), /^updated \d+(\.\d)? s ago$/);
  assert.ok(await desktop.$eval('#chart canvas', (c) => c.width > 0), 'the chart is drawn');
});

test('picking a product shows its figures', async () => {
  await desktop.selectOption('select[name="product"]', '2');
  await desktop.waitForSelector('#product-sales[data-exact]');
  await desktop.waitForSelector('#product-rating[data-exact]');
  assert.equal(await desktop.$eval('#product-sales', (el) => el.dataset.value), '2');
  assert.equal(normalise(await desktop.$eval('#product-sales', (el) => el.dataset.exact)), decimalSum(['389.85', '129.95']));
  assert.match(await desktop.$eval('#product-name', (el) => el.textContent), /Trail running shoes/);
});

test('every data-exact equals the API answer for the same query', async () => {
  const figs = await assertFiguresMatchApi(desktop);
  log(`${figs.length} figures equal the API`);
  assert.ok(figs.length >= 15, `only ${figs.length} figures`);
});

test('a posted event changes the figures within 1 s, without a reload', async () => {
  await desktop.evaluate(() => (window.__sameDocument = true));
  const before = await desktop.$eval('#kpi-sales', (el) => el.dataset.exact);
  const want = decimalSum([before, '10.01']);
  const productBefore = await desktop.$eval('#product-sales', (el) => el.dataset.exact);
  const t0 = Date.now();
  await post([sale(2, 1, '10.01')]);
  await desktop.waitForFunction(
    ([w, p]) => {
      const norm = (t) => (t.includes('.') ? t.replace(/0+$/, '').replace(/\.$/, '') : t);
      const sales = document.getElementById('kpi-sales').dataset.exact;
      const product = document.getElementById('product-sales').dataset.exact;
      return norm(sales) === w && product !== p;
    },
    [want, productBefore],
    { timeout: 1000, polling: 10 },
  );
  const ms = Date.now() - t0;
  log(`POST → figure changed on the page in ${ms} ms`);
  assert.ok(ms <= 1000, `took ${ms} ms`);
  assert.equal(await desktop.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
  await assertFiguresMatchApi(desktop);
  await desktop.waitForTimeout(300); // let the chart take the new point before the picture
  await desktop.screenshot({ path: join(SHOTS, 'desktop.png'), fullPage: true });
  log(`screenshot ${join(SHOTS, 'desktop.png')}`);
});

test('on a phone-sized screen nothing overflows sideways', async () => {
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  const phone = watch(await context.newPage(), 'phone');
  await signIn(phone);
  await phone.selectOption('select[name="product"]', '3');
  await phone.waitForSelector('#product-sales[data-exact]');
  await phone.waitForTimeout(300);
  const { scrollWidth, innerWidth, wide } = await phone.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    wide: [...document.querySelectorAll('body *')]
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5 && el.getClientRects().length)
      .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`)
      .slice(0, 10),
  }));
  assert.equal(innerWidth, 390);
  assert.ok(scrollWidth <= innerWidth, `the page is ${scrollWidth} px wide: ${wide.join(', ')}`);
  assert.deepEqual(wide, [], 'elements reach past the right edge');
  await assertFiguresMatchApi(phone);
  await phone.screenshot({ path: join(SHOTS, 'phone.png'), fullPage: true });
  log(`screenshot ${join(SHOTS, 'phone.png')}`);
  await context.close();
});

test('a wrong token is refused with a message, and signing out forgets the token', async () => {
  const context = await browser.newContext();
  const page = await context.newPage(); // not watched: the refused request is logged by Chromium
  await page.goto(`${BASE}/`);
  await page.fill('input[name="token"]', 'js_not_a_token');
  await page.click('#sign-in-form button[type="submit"]');
  await page.waitForFunction(() => document.getElementById('sign-in-error').textContent.includes('Not signed in'));
  assert.equal(await page.evaluate(() => sessionStorage.getItem('jetstream.token')), null);
  await context.close();

  await desktop.click('#sign-out');
  await desktop.waitForSelector('#sign-in', { state: 'visible' });
  assert.equal(await desktop.evaluate(() => sessionStorage.getItem('jetstream.token')), null);
});

test('no console errors, and the token never appeared in a URL', () => {
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(tokenInUrls, []);
});
