/**
 * One-off jobs (batch inference files, tasks) for the sidebar: their REST calls and the model
 * kept current from the same event stream as the sessions.
 *
 * The stream's snapshot holds the live jobs only, so the ended ones (the recent results a user
 * comes back for) are read once with GET /jobs on every (re)connect; events then move jobs
 * along, and a stored version per job keeps an older answer from undoing a newer event.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ISessionEvent, requestAPI, send } from './api';

export type JobState =
  | 'pending'
  | 'starting'
  | 'running'
  | 'done'
  | 'failed'
  | 'cancelled'
  | 'timeout';

export const JOB_TERMINAL_STATES: ReadonlySet<string> = new Set([
  'done',
  'failed',
  'cancelled',
  'timeout'
]);

/** Ended jobs the sidebar keeps listed below the live ones (the newest). */
export const MAX_ENDED_JOBS = 10;

/** A job as the server shows it (jobs.Job.public(); the Job schema of the OpenAPI document). */
export interface IJob {
  id: string;
  name: string;
  kind: 'batch' | 'task';
  recipe: string;
  backend: string;
  target: string;
  input: string;
  output: string;
  state: JobState;
  reason: string;
  concurrency: number;
  total: number;
  done: number;
  failed: number;
  resumed: number;
  created_at: number;
  updated_at: number;
  running_at: number | null;
  ended_at: number | null;
  owner: string;
  unreachable: boolean;
  cancel_requested: boolean;
  fetched: boolean;
  exit_code: number | null;
  log_tail: string;
  version: number;
  elapsed_s: number;
  eta_s: number | null;
}

/** A message of /hpcserve/api/events as far as jobs go: `job` on a change, `jobs` in the
 * snapshot. */
export interface IJobEvent extends ISessionEvent {
  job?: IJob;
  jobs?: IJob[];
}

export function isEnded(job: Pick<IJob, 'state'>): boolean {
  return JOB_TERMINAL_STATES.has(job.state);
}

/** Whether the job has an output JSONL worth downloading (a batch that answered something;
 * an ended job's output is final, a cancelled one's partial). */
export function hasResults(job: IJob): boolean {
  return job.kind === 'batch' && isEnded(job) && job.done > 0;
}

const jobPath = (id: string, rest = '') => `jobs/${encodeURIComponent(id)}${rest}`;

export const jobsApi = {
  jobs: (live = false) => requestAPI<{ jobs: IJob[] }>(live ? 'jobs?live=1' : 'jobs'),
  job: (id: string) => requestAPI<IJob>(jobPath(id)),
  cancel: (id: string) => requestAPI<IJob>(jobPath(id), { method: 'DELETE' }),
  /** The output JSONL as it is now, fetched with the same token / XSRF headers as every API
   * call (a plain link would work only where the login cookie does). */
  results: async (id: string): Promise<Blob> => {
    const response = await send(jobPath(id, '/results'), { method: 'GET', cache: 'no-store' });
    return response.blob();
  }
};

export interface IJobEntry {
  job: IJob;
  /** performance.now() when `job` arrived: elapsed and ETA count on from there. */
  receivedAt: number;
}

export class JobsModel {
  /** `events`: the stream's messages (SessionsModel.events); `list`: GET /jobs. */
  constructor(
    events: ISignal<unknown, ISessionEvent>,
    private readonly list: () => Promise<{ jobs: IJob[] }> = () => jobsApi.jobs()
  ) {
    events.connect(this._onEvent, this);
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Whether the first snapshot and list came. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** Why the last GET /jobs failed, or ''. */
  get error(): string {
    return this._error;
  }

  /** Live jobs (newest first), then the MAX_ENDED_JOBS that ended last. */
  get entries(): IJobEntry[] {
    const all = [...this._entries.values()].filter(e => !this._hidden.has(e.job.id));
    const live = all
      .filter(e => !isEnded(e.job))
      .sort((a, b) => b.job.created_at - a.job.created_at);
    const ended = all
      .filter(e => isEnded(e.job))
      .sort(
        (a, b) =>
          (b.job.ended_at ?? b.job.updated_at) - (a.job.ended_at ?? a.job.updated_at) ||
          b.job.created_at - a.job.created_at
      );
    return [...live, ...ended.slice(0, MAX_ENDED_JOBS)];
  }

  get(id: string): IJob | undefined {
    return this._entries.get(id)?.job;
  }

  /** Add or update a job (from an event or an API answer); older versions are ignored. */
  upsert(job: IJob, emit = true): void {
    const old = this._entries.get(job.id);
    if (old && (old.job.version ?? 0) > (job.version ?? 0)) {
      return;
    }
    this._entries.set(job.id, { job, receivedAt: performance.now() });
    if (emit) {
      this._changed.emit();
    }
  }

  /** Hide the jobs that have ended (until the page is reloaded). */
  clearEnded(): void {
    for (const entry of this._entries.values()) {
      if (isEnded(entry.job)) {
        this._hidden.add(entry.job.id);
      }
    }
    this._changed.emit();
  }

  /** Read every job again (GET /jobs): the ended ones are not in the stream's snapshot. */
  async refresh(): Promise<void> {
    try {
      const { jobs } = await this.list();
      const known = new Set(jobs.map(j => j.id));
      for (const job of jobs) {
        this.upsert(job, false);
      }
      // ended jobs removed on the server (its store was cleaned) go here too; a live one
      // missing may just be newer than the answer
      for (const [id, entry] of this._entries) {
        if (!known.has(id) && isEnded(entry.job)) {
          this._entries.delete(id);
        }
      }
      this._error = '';
    } catch (err) {
      this._error = (err as Error)?.message || String(err);
    }
    this._loaded = true;
    this._changed.emit();
  }

  dispose(): void {
    Signal.clearData(this);
  }

  private _onEvent(_: unknown, msg: IJobEvent): void {
    if (msg.type === 'snapshot') {
      for (const job of Array.isArray(msg.jobs) ? msg.jobs : []) {
        this.upsert(job, false);
      }
      this._changed.emit();
      void this.refresh();
    } else if (msg.job && typeof msg.job.id === 'string') {
      this.upsert(msg.job);
    }
  }

  private _entries = new Map<string, IJobEntry>();
  private _hidden = new Set<string>();
  private _loaded = false;
  private _error = '';
  private _changed = new Signal<this, void>(this);
}
