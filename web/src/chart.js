// The per-minute sales chart (uPlot: canvas, ~50 KB, redraws a few thousand points in well under
// a millisecond, so redrawing on every pushed event costs nothing).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

const ACCENT = '#2563eb';
const SECOND = '#f97316';
/** The chart's step (the series is asked with step=1m), in seconds. */
const STEP = 60;

// Axis ticks in compact form (12K, 1.5M): the axis stays narrow whatever the scale.
const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });
const tick = (v) => (v == null ? '' : compact.format(v));

/** A chart in `el` that follows the element's width. */
export function salesChart(el) {
  const height = () => (el.clientWidth < 500 ? 200 : 260);
  const opts = {
    width: el.clientWidth || 600,
    height: height(),
    // Room on the right for the last time label.
    padding: [8, 20, 0, 0],
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      // Half a step of room on each side, so the first and last bars are drawn whole.
      x: { time: true, range: (u, min, max) => [min - STEP / 2, max + STEP / 2] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      { stroke: '#64748b', grid: { stroke: '#e2e8f0' }, ticks: { stroke: '#e2e8f0' } },
      { stroke: '#64748b', grid: { stroke: '#e2e8f0' }, ticks: { stroke: '#e2e8f0' }, size: 50, values: (u, vs) => vs.map(tick) },
    ],
    series: [
      {},
      {
        label: 'All products',
        stroke: ACCENT,
        fill: 'rgba(37, 99, 235, 0.25)',
        paths: uPlot.paths.bars({ size: [0.8, 24] }),
        points: { show: false },
      },
      {
        label: 'Product',
        stroke: SECOND,
        fill: 'rgba(249, 115, 22, 0.85)',
        paths: uPlot.paths.bars({ size: [0.45, 12] }),
        points: { show: false },
        show: false,
      },
    ],
  };
  const plot = new uPlot(opts, [[], [], []], el);
  new ResizeObserver(() => {
    const width = el.clientWidth;
    if (width && (width !== plot.width || height() !== plot.height)) plot.setSize({ width, height: height() });
  }).observe(el);

  let overall = [];
  let product = null;
  const draw = () => {
    const xs = overall.map((p) => p.t);
    const byTime = new Map((product ?? []).map((p) => [p.t, p.v]));
    plot.setSeries(2, { show: product !== null });
    plot.setData([xs, overall.map((p) => p.v), xs.map((t) => (product ? byTime.get(t) ?? null : null))]);
  };
  // A minute without sales draws no bar (rather than a flat one).
  const points = (answer) => answer.points.map((p) => ({ t: Date.parse(p.t) / 1000, v: Number(p.value) || null }));
  return {
    /** The overall series answer (`/series`, numbers as exact text). */
    setOverall(answer) {
      overall = points(answer);
      draw();
    },
    /** The selected product's series answer, or null for none. */
    setProduct(answer) {
      product = answer ? points(answer) : null;
      draw();
    },
  };
}
