// Server-Sent Events over fetch(). EventSource cannot send an Authorization header, and the
// token must never go in a URL, so the stream is read from a fetch() body: the same wire format
// (event/data/id fields, blank line ends an event, ':' lines are comments such as heartbeats),
// reconnecting with Last-Event-ID.

/** The stream answered with an HTTP error (401, 403, 429, …). */
export class StreamHttpError extends Error {
  constructor(status, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
  }
}

/** Longest silence before the connection is taken for dead (the server sends at least a heartbeat every 15 s). */
const SILENCE_MS = 35_000;

/**
 * Reads one connection until it ends. `onEvent({event, data, id})` for each event, `onActivity()`
 * for every chunk (heartbeats included). Resolves when the server closes the stream; rejects on
 * an HTTP error, a network error or an abort.
 */
export async function readStream({ url, token, lastEventId, signal, onOpen, onEvent, onActivity }) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' };
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  const response = await fetch(url, { headers, signal, cache: 'no-store' });
  if (!response.ok) {
    let message = '';
    try {
      message = JSON.parse(await response.text()).message;
    } catch {
      // Not JSON: the status says enough.
    }
    throw new StreamHttpError(response.status, message);
  }
  onOpen?.();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = { event: 'message', data: [], id: null };
  let watchdog;
  const arm = () => {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => reader.cancel('silent for too long'), SILENCE_MS);
  };
  try {
    arm();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      arm();
      onActivity?.();
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (event.data.length) onEvent({ event: event.event, data: event.data.join('\n'), id: event.id });
          event = { event: 'message', data: [], id: null };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        let v = colon === -1 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event.event = v;
        else if (field === 'data') event.data.push(v);
        else if (field === 'id') event.id = v;
      }
    }
  } finally {
    clearTimeout(watchdog);
  }
}

/**
 * A stream of subscriptions (`{name: path}`) kept open: reconnects with a growing pause after a
 * failure, resumes with Last-Event-ID, stops for good on 401/403 (`onDenied`). `close()` ends it.
 */
export function subscribe({ token, subs, onEvent, onState, onDenied }) {
  const query = Object.entries(subs)
    .map(([name, path]) => `sub=${encodeURIComponent(`${name}:${path}`)}`)
    .join('&');
  const url = `/api/v1/stream?${query}`;
  const controller = new AbortController();
  let lastEventId = null;
  let pause = 500;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        onState?.('connecting');
        await readStream({
          url,
          token,
          lastEventId,
          signal: controller.signal,
          onOpen: () => onState?.('live'),
          onActivity: () => (pause = 500),
          onEvent: (e) => {
            if (e.id) lastEventId = e.id;
            onEvent(e);
          },
        });
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof StreamHttpError && (err.status === 401 || err.status === 403)) {
          onDenied?.(err);
          return;
        }
        const why = err instanceof StreamHttpError ? err.message : 'connection lost';
        onState?.('retrying', why);
      }
      if (controller.signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 10_000);
    }
  })();
  return { close: () => controller.abort() };
}
