// The live dashboard: sign in with a read token (kept in sessionStorage, sent only in the
// Authorization header), then every figure arrives over one event stream and is redrawn as it
// changes. Every figure is an element with data-metric / data-dim / data-value / data-window /
// data-agg, and data-exact holding the API's exact text (see ../README.md).
import './style.css';
import { salesChart } from './chart.js';
import { formatDecimal, formatMean, formatMoney, parseExact, setFigure } from './exact.js';
import { subscribe } from './stream.js';

const TOKEN_KEY = 'jetstream.token';
const PRODUCT_KEY = 'jetstream.product';
const WINDOW = '1h';

/** What the page subscribes to whatever the product: name → GET path of the API. */
const OVERVIEW = {
  sales: `/api/v1/metrics/sales_amount?window=${WINDOW}`,
  units: `/api/v1/metrics/sales_units?window=${WINDOW}`,
  events: '/api/v1/metrics/events?window=10s',
  series: `/api/v1/metrics/sales_amount/series?window=${WINDOW}&step=1m`,
  top: `/api/v1/metrics/sales_amount/top?dim=product_id&window=${WINDOW}&by=sum&limit=10`,
  ratings: `/api/v1/metrics/rating/top?dim=category&window=${WINDOW}&by=avg&limit=50`,
  products: '/api/v1/dimensions/product_id/values?limit=200',
};

/** The selected product's figures. */
const productSubs = (id) => {
  const q = `dim=product_id&value=${encodeURIComponent(id)}&window=${WINDOW}`;
  return {
    product_sales: `/api/v1/metrics/sales_amount?${q}`,
    product_units: `/api/v1/metrics/sales_units?${q}`,
    product_rating: `/api/v1/metrics/rating?${q}`,
    product_series: `/api/v1/metrics/sales_amount/series?${q}&step=1m`,
  };
};

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  overview: null,
  product: null,
  productStream: null,
  lastEventAt: 0,
  connection: 'connecting',
  labels: new Map(),
  /** Subscription name → message, for those whose last answer was an error. */
  failed: new Map(),
  chart: null,
};

// ---- sign-in --------------------------------------------------------------------------------

function showSignIn(message = '') {
  stopStreams();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('dashboard').hidden = true;
  $('status').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('token').value = '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  const button = event.submitter ?? $('sign-in-form').querySelector('button');
  button.disabled = true;
  $('sign-in-error').textContent = '';
  try {
    // Any read answers whether the token is good (and has the read scope).
    const r = await fetch('/api/v1/metrics', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    if (!r.ok) {
      const why = await r.json().then((b) => b.message, () => `HTTP ${r.status}`);
      $('sign-in-error').textContent = `Not signed in: ${why}.`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  } catch {
    $('sign-in-error').textContent = 'The server cannot be reached.';
  } finally {
    button.disabled = false;
  }
}

// ---- streams --------------------------------------------------------------------------------

function stopStreams() {
  state.overview?.close();
  state.productStream?.close();
  state.overview = state.productStream = null;
}

function start(token) {
  state.token = token;
  $('sign-in').hidden = true;
  $('dashboard').hidden = false;
  $('status').hidden = false;
  $('sign-out').hidden = false;
  state.chart ??= salesChart($('chart'));
  state.overview = subscribe({
    token,
    subs: OVERVIEW,
    onEvent: (e) => received(e, OVERVIEW_HANDLERS),
    onState: connectionState,
    onDenied: (err) => showSignIn(`Signed out: ${err.message}.`),
  });
  selectProduct(sessionStorage.getItem(PRODUCT_KEY) ?? '');
}

function connectionState(s, why) {
  state.connection = s;
  if (s === 'retrying') {
    const banner = $('stream-error');
    banner.hidden = false;
    banner.textContent = `Reconnecting to the live stream (${why})…`;
  } else {
    showFailures();
  }
}

/** One pushed event: `event` is the subscription's name, or `error` for a failed one. */
function received(e, handlers) {
  state.lastEventAt = performance.now();
  const data = parseExact(e.data);
  if (e.event === 'error') {
    if (data.status === '401') {
      showSignIn(`Signed out: ${data.answer?.message ?? 'the token is no longer valid'}.`);
      return;
    }
    state.failed.set(data.sub, `“${data.sub}” failed: ${data.answer?.message ?? `HTTP ${data.status}`}`);
    showFailures();
    return;
  }
  if (state.failed.delete(e.event)) showFailures();
  handlers[e.event]?.(data);
}

/** The subscriptions whose last answer was an error, in the banner. */
function showFailures() {
  const banner = $('stream-error');
  if (state.connection === 'retrying') return;
  banner.hidden = state.failed.size === 0;
  banner.textContent = [...state.failed.values()].join(' · ');
}

const OVERVIEW_HANDLERS = {
  sales: (a) => {
    setFigure($('kpi-sales'), a.result.sum, formatMoney);
    setFigure($('kpi-sales-count'), a.result.count);
  },
  units: (a) => setFigure($('kpi-units'), a.result.sum),
  events: (a) => {
    setFigure($('kpi-events'), a.result.count);
    const seconds = (Date.parse(a.window.to) - Date.parse(a.window.from)) / 1000;
    $('kpi-eps').textContent = seconds > 0 ? formatDecimal((Number(a.result.count) / seconds).toFixed(1)) : '–';
  },
  series: (a) => state.chart.setOverall(a),
  top: renderTop,
  ratings: renderRatings,
  products: (a) => {
    for (const v of a.values) state.labels.set(v.value, v.label);
    if (!$('product-search').value.trim()) renderOptions(a.values);
  },
};

const PRODUCT_HANDLERS = {
  product_sales: (a) => setFigure($('product-sales'), a.result.sum, formatMoney),
  product_units: (a) => setFigure($('product-units'), a.result.sum),
  product_rating: (a) => setFigure($('product-rating'), a.result.avg, formatMean),
  product_series: (a) => state.chart.setProduct(a),
};

// ---- rendering ------------------------------------------------------------------------------

/** An element carrying one exact figure. */
function figure(tag, attrs, text, format) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.dataset[k] = v;
  setFigure(el, text, format);
  return el;
}

const productName = (id, label) => label ?? state.labels.get(id) ?? `Product ${id}`;

function renderTop(answer) {
  const body = $('top-rows');
  if (!answer.items.length) {
    body.innerHTML = '<tr><td colspan="4" class="muted">No sales yet.</td></tr>';
    return;
  }
  const rows = answer.items.map((item, i) => {
    const tr = document.createElement('tr');
    tr.dataset.product = item.value;
    tr.title = 'Show this product';
    tr.classList.toggle('selected', item.value === state.product);
    tr.addEventListener('click', () => selectProduct(item.value));
    const rank = document.createElement('td');
    rank.textContent = String(i + 1);
    const name = document.createElement('td');
    name.className = 'name';
    name.textContent = productName(item.value, item.label);
    const id = document.createElement('span');
    id.className = 'muted id';
    id.textContent = ` #${item.value}`;
    name.append(id);
    const at = { metric: 'sales_amount', dim: 'product_id', value: item.value, window: WINDOW };
    const sales = figure('td', { ...at, agg: 'sum' }, item.sum, formatMoney);
    const count = figure('td', { ...at, agg: 'count' }, item.count);
    sales.className = count.className = 'num';
    tr.append(rank, name, sales, count);
    return tr;
  });
  body.replaceChildren(...rows);
}

function renderRatings(answer) {
  const list = $('ratings');
  if (!answer.items.length) {
    list.innerHTML = '<li class="muted">No ratings yet.</li>';
    return;
  }
  const items = [...answer.items].sort((a, b) => a.value.localeCompare(b.value));
  list.replaceChildren(
    ...items.map((item) => {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = item.value;
      const bar = document.createElement('span');
      bar.className = 'meter';
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0, Math.min(100, (Number(item.avg) / 5) * 100))}%`;
      bar.append(fill);
      const at = { metric: 'rating', dim: 'category', value: item.value, window: WINDOW };
      const avg = figure('span', { ...at, agg: 'avg' }, item.avg, formatMean);
      avg.className = 'avg';
      const count = figure('span', { ...at, agg: 'count' }, item.count);
      const n = document.createElement('span');
      n.className = 'muted count';
      n.append(count, item.count === '1' ? ' rating' : ' ratings');
      li.append(name, bar, avg, n);
      return li;
    }),
  );
}

function renderOptions(values) {
  const select = $('product');
  const chosen = state.product ?? '';
  const options = [new Option('Choose a product…', '')];
  const seen = new Set();
  for (const v of values) {
    seen.add(v.value);
    options.push(new Option(`${productName(v.value, v.label)} (#${v.value})`, v.value));
  }
  if (chosen && !seen.has(chosen)) options.push(new Option(`${productName(chosen)} (#${chosen})`, chosen));
  const same =
    select.options.length === options.length &&
    options.every((o, i) => select.options[i].value === o.value && select.options[i].text === o.text);
  if (!same) select.replaceChildren(...options);
  select.value = chosen;
}

function selectProduct(id) {
  state.productStream?.close();
  state.productStream = null;
  state.product = id || null;
  $('product').value = id;
  if (id) sessionStorage.setItem(PRODUCT_KEY, id);
  else sessionStorage.removeItem(PRODUCT_KEY);
  const box = $('product-figures');
  box.hidden = !id;
  for (const row of $('top-rows').children) row.classList.toggle('selected', !!id && row.dataset.product === id);
  for (const el of box.querySelectorAll('[data-metric]')) {
    el.dataset.value = id;
    delete el.dataset.exact;
    el.textContent = '–';
  }
  state.chart?.setProduct(null);
  for (const name of state.failed.keys()) if (name.startsWith('product_')) state.failed.delete(name);
  showFailures();
  const name = id ? productName(id) : '';
  $('product-name').textContent = id ? `${name} (#${id})` : '';
  $('chart-legend').innerHTML = id
    ? '<span class="key all"></span>All products <span class="key one"></span><span id="legend-product"></span>'
    : '';
  if (id) $('legend-product').textContent = name;
  if (!id || !state.token) return;
  state.productStream = subscribe({
    token: state.token,
    subs: productSubs(id),
    onEvent: (e) => received(e, PRODUCT_HANDLERS),
    onState: connectionState,
    onDenied: (err) => showSignIn(`Signed out: ${err.message}.`),
  });
}

// Searching asks for values whose label contains the text (the picker lists the first 200).
let searchTimer;
async function searchProducts() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const text = $('product-search').value.trim();
    if (!text || !state.token) return;
    const q = `search=${encodeURIComponent(text)}&limit=50`;
    try {
      const r = await fetch(`/api/v1/dimensions/product_id/values?${q}`, {
        headers: { Authorization: `Bearer ${state.token}` },
      });
      if (r.ok) renderOptions(parseExact(await r.text()).values);
    } catch {
      // The stream's banner reports a lost server.
    }
  }, 200);
}

// ---- freshness ------------------------------------------------------------------------------

function tick() {
  const el = $('freshness');
  const dot = $('status-dot');
  if (!state.lastEventAt) {
    el.textContent = state.connection === 'retrying' ? 'reconnecting…' : 'connecting…';
    dot.className = 'dot';
    return;
  }
  const age = (performance.now() - state.lastEventAt) / 1000;
  el.textContent = `updated ${age < 10 ? age.toFixed(1) : Math.round(age)} s ago`;
  el.dataset.freshness = age.toFixed(3);
  dot.className = `dot ${state.connection === 'live' && age < 5 ? 'live' : 'stale'}`;
}

// ---- wiring ---------------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', () => showSignIn());
$('product').addEventListener('change', (e) => selectProduct(e.target.value));
$('product-search').addEventListener('input', searchProducts);
setInterval(tick, 100);

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else showSignIn();
