// Exact numbers: the API answers decimals as JSON numbers with every digit kept (a sum of money
// can have more digits than a double holds), and the page must show them as sent. So answers are
// parsed with each number kept as its source text; arithmetic for drawing uses Number(text),
// what is displayed and put in `data-exact` is the text itself.

// A JSON string (skipped as is) or a JSON number (captured).
const TOKEN = /"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;

/** JSON.parse, except that every number comes back as a string holding its exact source text. */
export function parseExact(text) {
  return JSON.parse(text.replace(TOKEN, (m, num) => (num === undefined ? m : `"${num}"`)));
}

const GROUP = /\B(?=(\d{3})+(?!\d))/g;

/**
 * An exact decimal text for people: thousands grouped, at least `minFraction` decimals (padded
 * with zeros, never rounded: exactness is the point). Text that is not a plain decimal (an
 * exponent) is shown through Number.
 */
export function formatDecimal(text, minFraction = 0) {
  if (text === null || text === undefined) return '–';
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) return Number(text).toLocaleString('en-US');
  const [, sign, int, frac = ''] = m;
  const fraction = frac.padEnd(minFraction, '0');
  return `${sign}${int.replace(GROUP, ',')}${fraction ? `.${fraction}` : ''}`;
}

/**
 * A decimal text rounded to `digits` decimals, half away from zero, in decimal arithmetic (BigInt),
 * so that rounding never goes through a double. Text that is not a plain decimal is returned as is.
 */
export function roundDecimal(text, digits) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) return text;
  const [, sign, int, frac = ''] = m;
  if (frac.length <= digits) return text;
  let kept = BigInt(int + frac.slice(0, digits));
  if (frac[digits] >= '5') kept += 1n;
  const s = kept.toString().padStart(digits + 1, '0');
  const out = digits ? `${s.slice(0, -digits)}.${s.slice(-digits)}` : s;
  return /^[0.]*$/.test(out) ? out : sign + out;
}

/**
 * Money: to the cent, as people read it (rounded in decimal; a figure with more decimals keeps
 * every digit in data-exact and in its tooltip).
 */
export const formatMoney = (text) => (text === null || text === undefined ? '–' : formatDecimal(roundDecimal(text, 2), 2));

/** A mean for people (rounded to `digits`; the exact text stays in data-exact). */
export function formatMean(text, digits = 2) {
  if (text === null || text === undefined) return '–';
  return Number(text).toFixed(digits);
}

/** "12.50" → "12.5", "3.00" → "3": decimal texts compared by value. */
const trimZeros = (t) => (t.includes('.') ? t.replace(/0+$/, '').replace(/\.$/, '') : t);

/**
 * Puts an exact figure in `el`: `data-exact` gets the API's text (or "null"), the element's text
 * the formatted value.
 */
export function setFigure(el, text, format = formatDecimal) {
  const exact = text === null || text === undefined ? 'null' : String(text);
  if (el.dataset.exact !== exact) {
    el.dataset.exact = exact;
    el.textContent = format(text);
    // When the shown text is rounded, the exact figure is a hover (or long press) away.
    const shown = trimZeros(el.textContent.replaceAll(',', ''));
    if (text !== null && text !== undefined && shown !== trimZeros(exact)) el.title = formatDecimal(exact);
    else el.removeAttribute('title');
  }
}
