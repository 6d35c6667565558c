/**
 * The hpcserve REST API of the server extension (/hpcserve/api/...), through JupyterLab's
 * ServerConnection: it adds the token / XSRF header exactly as Lab's own API calls do.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type SessionState =
  | 'pending'
  | 'starting'
  | 'ready'
  | 'stopping'
  | 'stopped'
  | 'failed'
  | 'timeout';

export const TERMINAL_STATES: ReadonlySet<string> = new Set(['stopped', 'failed', 'timeout']);

/** A session as the server shows it (Session.public()). */
export interface ISession {
  id: string;
  name: string;
  recipe: string;
  backend: string;
  target: string;
  state: SessionState;
  reason: string;
  endpoints: string[];
  model: string;
  created_at: number;
  updated_at: number;
  ready_at: number | null;
  ended_at: number | null;
  owner: string;
  unreachable: boolean;
  version: number;
  age_s: number;
  idle_timeout_s: number | null;
  max_lifetime_s: number | null;
  resources: Record<string, unknown>;
  /** The nearer of the target's limit and the max lifetime (null: nothing limits it). */
  time_limit_s?: number | null;
  /** Seconds left when the JSON was made (null: no limit, or it ended). */
  time_left_s?: number | null;
  /** ISO 8601, when it ends. */
  ends_at?: string | null;
  /** While ready: seconds to idle autostop when the JSON was made. */
  idle_stop_in_s?: number | null;
  /** The engine stopped answering health checks while ready (a flag, like `unreachable`). */
  degraded?: boolean;
  degraded_reason?: string;
}

export interface IRecipe {
  name: string;
  description: string;
  category: string;
  model: string | null;
  backends: string[];
  resources: { gpus?: number; time?: string | null; [key: string]: unknown };
  replicas: number;
}

export interface ITarget {
  name: string;
  kind: string;
  [key: string]: unknown;
}

/** One message of GET /hpcserve/api/events. */
export interface ISessionEvent {
  type: string;
  ts?: number;
  session?: ISession;
  sessions?: ISession[];
  /** What a notice (`expiring`, `idle-expiring`, `degraded`...) says. */
  message?: string;
}

/** The answer of POST /hpcserve/api/sessions/{id}/extend. */
export interface IExtendAnswer {
  session: ISession;
  message: string;
}

/** One GPU of a session, as nvidia-smi reported it. */
export interface IGpuUse {
  index: number;
  name: string;
  utilization_pct: number | null;
  memory_used_mib: number | null;
  memory_total_mib: number | null;
}

/** GET /hpcserve/api/sessions/{id}/metrics: the engine's own numbers, and its GPUs'. */
export interface ISessionMetrics {
  session_id: string;
  available: boolean;
  /** Why not available (e.g. the engine has no Prometheus endpoint). */
  reason?: string;
  requests_running?: number | null;
  requests_waiting?: number | null;
  prompt_tokens_total?: number | null;
  generation_tokens_total?: number | null;
  generation_tokens_per_s?: number | null;
  kv_cache_usage?: number | null;
  scraped_at?: string | null;
  /** [epoch s, tokens/s, requests running] over the last minutes. */
  history?: [number, number | null, number | null][];
  gpus?: { available: boolean; reason?: string; gpus?: IGpuUse[] };
}

export interface ILaunchRequest {
  recipe: string;
  backend?: string;
  target: string;
  name?: string;
  overrides: Record<string, string>;
}

/** An error answer of the API: its `{"error", "detail"}` body, or the network failure. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly detail: string | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** One line for a notification: the server's message, then its hint. */
  get text(): string {
    return this.detail ? `${this.message} (${this.detail})` : this.message;
  }
}

export function settings(): ServerConnection.ISettings {
  return ServerConnection.makeSettings();
}

export function apiUrl(path: string): string {
  return URLExt.join(settings().baseUrl, 'hpcserve/api', path);
}

/** The OpenAI-compatible gateway, as an absolute URL (what a client's base_url takes). */
export function openaiBaseUrl(): string {
  const url = URLExt.join(settings().baseUrl, 'hpcserve/v1');
  return new URL(url, window.location.href).href;
}

/** A request to the API through ServerConnection; throws ApiError unless the answer is OK. */
export async function send(path: string, init: RequestInit): Promise<Response> {
  const s = settings();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(apiUrl(path), init, s);
  } catch (err) {
    if ((err as Error)?.name === 'AbortError') {
      throw err;
    }
    const cause = (err as Error)?.message || String(err);
    throw new ApiError(0, `cannot reach the Jupyter server: ${cause}`);
  }
  if (!response.ok) {
    throw await errorOf(response);
  }
  return response;
}

async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') {
      return new ApiError(response.status, body.error, body.detail ?? null);
    }
    if (body && typeof body.message === 'string') {
      return new ApiError(response.status, body.message);
    }
  } catch {
    // not JSON: fall through
  }
  const what = `${response.status} ${response.statusText || 'error'}`.trim();
  const plain = text.trim() && !text.trimStart().startsWith('<'); // not an HTML error page
  return new ApiError(response.status, plain ? `${what}: ${text.trim().slice(0, 200)}` : what);
}

/** A JSON request to the API; throws ApiError with the server's message. */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers = new Headers(init.headers);
  if (init.body !== undefined && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }
  const response = await send(path, { ...init, headers });
  const text = await response.text();
  return (text ? JSON.parse(text) : {}) as T;
}

/**
 * A streamed GET: calls `onText` with each decoded chunk until the server ends the answer
 * (resolves) or `signal` aborts (rejects with an AbortError).
 */
export async function streamAPI(
  path: string,
  onText: (text: string) => void,
  signal: AbortSignal
): Promise<void> {
  const response = await send(path, {
    method: 'GET',
    cache: 'no-store',
    signal,
    headers: { Accept: 'text/event-stream, text/plain' }
  });
  const body = response.body;
  if (!body) {
    onText(await response.text());
    return;
  }
  const reader = body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      const text = decoder.decode(value, { stream: true });
      if (text) {
        onText(text);
      }
    }
    const rest = decoder.decode();
    if (rest) {
      onText(rest);
    }
  } finally {
    reader.releaseLock();
  }
}

export const api = {
  recipes: () =>
    requestAPI<{ recipes: IRecipe[]; errors: Record<string, string> }>('recipes'),
  targets: () => requestAPI<{ targets: ITarget[] }>('targets'),
  sessions: (live = false) =>
    requestAPI<{ sessions: ISession[] }>(live ? 'sessions?live=1' : 'sessions'),
  session: (id: string) => requestAPI<ISession>(`sessions/${encodeURIComponent(id)}`),
  launch: (body: ILaunchRequest) =>
    requestAPI<ISession>('sessions', { method: 'POST', body: JSON.stringify(body) }),
  stop: (id: string) =>
    requestAPI<ISession>(`sessions/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  keepalive: (id: string) =>
    requestAPI<ISession>(`sessions/${encodeURIComponent(id)}/keepalive`, { method: 'POST' }),
  relaunch: (id: string, name?: string) =>
    requestAPI<ISession>(`sessions/${encodeURIComponent(id)}/relaunch`, {
      method: 'POST',
      body: JSON.stringify(name ? { name } : {})
    }),
  extend: (id: string, time: string) =>
    requestAPI<IExtendAnswer>(`sessions/${encodeURIComponent(id)}/extend`, {
      method: 'POST',
      body: JSON.stringify({ time })
    }),
  metrics: (id: string, signal?: AbortSignal) =>
    requestAPI<ISessionMetrics>(`sessions/${encodeURIComponent(id)}/metrics`, {
      cache: 'no-store',
      signal
    }),
  useInJupyterAi: (id: string, isDefault = false) =>
    requestAPI<IJupyterAiEntry>(`sessions/${encodeURIComponent(id)}/jupyter-ai`, {
      method: 'POST',
      body: JSON.stringify({ default: isDefault })
    })
};

/** The answer of POST /hpcserve/api/sessions/{id}/jupyter-ai. */
export interface IJupyterAiEntry {
  session_id: string;
  name: string;
  model_id: string;
  api_base: string;
  default: boolean;
  key_id: string;
}
