/**
 * Live serving metrics of ready sessions (GET /hpcserve/api/sessions/{id}/metrics) and their
 * sparkline. The server scrapes an engine only while someone asks, so the sidebar asks every
 * few seconds only while it is visible, and only for ready sessions; a session whose metrics
 * route fails (404 on a server without it, a session gone) is asked again only after a pause.
 */
import { api, ApiError, ISession, ISessionMetrics } from './api';

/** How often a visible sidebar asks for the metrics of each ready session. */
export const METRICS_INTERVAL_MS = 5000;
/** The pause after a failed answer (a 404 on a server without the route, an error). */
const BACKOFF_MS = { missing: 60000, error: 15000 };

const SVG_NS = 'http://www.w3.org/2000/svg';

export class MetricsPoller {
  /**
   * @param active whether anyone watches now (the sidebar is visible)
   * @param sessions the sessions shown
   * @param onMetrics an answer for a session, or null when it has none to show
   */
  constructor(
    private readonly active: () => boolean,
    private readonly sessions: () => ISession[],
    private readonly onMetrics: (id: string, metrics: ISessionMetrics | null) => void,
    interval = METRICS_INTERVAL_MS
  ) {
    this._timer = window.setInterval(() => this.poll(), interval);
  }

  /** Ask now for each ready session not already being asked and not pausing after a failure. */
  poll(): void {
    if (this._disposed || !this.active() || document.visibilityState === 'hidden') {
      return;
    }
    const now = Date.now();
    const ready = new Set<string>();
    for (const s of this.sessions()) {
      if (s.state !== 'ready') {
        continue;
      }
      ready.add(s.id);
      if (this._inFlight.has(s.id) || (this._pauseUntil.get(s.id) ?? 0) > now) {
        continue;
      }
      void this._ask(s.id);
    }
    // a session no longer ready shows no metrics
    for (const id of this._shown) {
      if (!ready.has(id)) {
        this._shown.delete(id);
        this.onMetrics(id, null);
      }
    }
  }

  dispose(): void {
    this._disposed = true;
    window.clearInterval(this._timer);
    this._abort.abort();
  }

  private async _ask(id: string): Promise<void> {
    this._inFlight.add(id);
    try {
      const metrics = await api.metrics(id, this._abort.signal);
      if (this._disposed) {
        return;
      }
      this._pauseUntil.delete(id);
      this._shown.add(id);
      this.onMetrics(id, metrics);
    } catch (err) {
      if (this._disposed) {
        return;
      }
      const missing = err instanceof ApiError && err.status === 404;
      this._pauseUntil.set(id, Date.now() + (missing ? BACKOFF_MS.missing : BACKOFF_MS.error));
      this._shown.delete(id);
      this.onMetrics(id, null);
    } finally {
      this._inFlight.delete(id);
    }
  }

  private _timer: number;
  private _disposed = false;
  private _abort = new AbortController();
  private _inFlight = new Set<string>();
  private _shown = new Set<string>();
  private _pauseUntil = new Map<string, number>();
}

/** The points of a polyline through `values` (null: skipped) in a w x h box, 0 at the bottom. */
function points(
  times: number[],
  values: (number | null)[],
  w: number,
  h: number
): string {
  const t0 = times[0];
  const span = times[times.length - 1] - t0 || 1;
  const top = Math.max(0, ...values.map(v => v ?? 0)) || 1;
  const out: string[] = [];
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      return;
    }
    const x = times.length > 1 ? ((times[i] - t0) / span) * w : w;
    const y = h - 1 - (Math.max(0, v) / top) * (h - 2);
    out.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  return out.join(' ');
}

/**
 * An inline SVG of tokens/s (solid) and requests running (dashed) over `history`, each scaled
 * to its own greatest value; a flat line at the bottom while there is no history yet.
 */
export function sparklineSvg(
  history: ISessionMetrics['history'],
  width = 96,
  height = 20
): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'jp-hpcserve-sparkline');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img');
  const rows = (history ?? []).filter(p => Array.isArray(p) && p.length >= 3);
  svg.dataset.points = String(rows.length);
  const times = rows.map(p => p[0]);
  const series: [string, (number | null)[]][] = [
    ['jp-hpcserve-sparkline-requests', rows.map(p => p[2])],
    ['jp-hpcserve-sparkline-tokens', rows.map(p => p[1])]
  ];
  for (const [cls, values] of series) {
    const line = document.createElementNS(SVG_NS, 'polyline');
    line.setAttribute('class', cls);
    line.setAttribute('fill', 'none');
    const pts = rows.length ? points(times, values, width, height) : '';
    line.setAttribute('points', pts || `0,${height - 1} ${width},${height - 1}`);
    svg.appendChild(line);
  }
  return svg;
}

function fixed(v: number | null | undefined, digits = 1): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits);
}

/** The numbers beside the sparkline: tokens/s, requests, KV cache, GPUs. */
export function metricsText(m: ISessionMetrics): { text: string; title: string } {
  const parts = [
    `${fixed(m.generation_tokens_per_s)} tok/s`,
    `${m.requests_running ?? '–'} running`,
    `${m.requests_waiting ?? '–'} waiting`
  ];
  if (m.kv_cache_usage !== null && m.kv_cache_usage !== undefined) {
    parts.push(`KV ${Math.round(m.kv_cache_usage * 100)}%`);
  }
  const gpus = m.gpus?.available ? (m.gpus.gpus ?? []) : [];
  if (gpus.length) {
    const util = gpus.map(g => g.utilization_pct ?? 0);
    parts.push(`GPU ${Math.round(util.reduce((a, b) => a + b, 0) / util.length)}%`);
  }
  const title = [
    'Tokens/s (solid) and requests running (dashed) over the last minutes',
    `tokens: ${m.generation_tokens_total ?? '–'} generated, ` +
      `${m.prompt_tokens_total ?? '–'} in prompts`,
    ...gpus.map(
      g =>
        `GPU ${g.index} ${g.name}: ${g.utilization_pct ?? '–'}%, ` +
        `${g.memory_used_mib ?? '–'} / ${g.memory_total_mib ?? '–'} MiB`
    ),
    m.gpus && !m.gpus.available && m.gpus.reason ? `GPUs: ${m.gpus.reason}` : '',
    m.scraped_at ? `scraped at ${m.scraped_at}` : ''
  ].filter(Boolean);
  return { text: parts.join(' · '), title: title.join('\n') };
}
