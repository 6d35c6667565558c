/**
 * The "Jobs" section of the AI Sessions sidebar: one row per job (name, state, progress bar of
 * answered / total lines with the failed share, elapsed time and ETA, the reason) with Cancel
 * for live jobs and Download for results, updated in place from the JobsModel.
 *
 * Every server value goes in as text (textContent, attributes), never as HTML.
 */
import { clearIcon, downloadIcon, stopIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';

import { CommandIDs } from './commands';
import { hasResults, IJob, IJobEntry, isEnded, JobsModel } from './jobs';
import { actionButton, formatAge, ISidebarSection } from './sidebar';

/** The log lines a failed job's tooltip shows under its reason. */
const TOOLTIP_LOG_LINES = 8;

interface IJobRow {
  node: HTMLLIElement;
  name: HTMLSpanElement;
  time: HTMLSpanElement;
  badge: HTMLSpanElement;
  meta: HTMLDivElement;
  bar: HTMLDivElement;
  ok: HTMLDivElement;
  bad: HTMLDivElement;
  counts: HTMLSpanElement;
  eta: HTMLSpanElement;
  reason: HTMLDivElement;
  actions: HTMLDivElement;
  key: string;
}

/** "12 / 100 · 2 failed"; "–" while the input is not counted yet. */
export function formatCounts(job: Pick<IJob, 'done' | 'total' | 'failed'>): string {
  if (!job.total && !job.done) {
    return '– / –';
  }
  const failed = job.failed ? ` · ${job.failed} failed` : '';
  return `${job.done} / ${job.total}${failed}`;
}

/** Percent of `part` in `total`, within 0..100. */
function percent(part: number, total: number): number {
  return total > 0 ? Math.min(100, Math.max(0, (100 * part) / total)) : 0;
}

export class JobsSection implements ISidebarSection {
  readonly node: HTMLElement;

  constructor(
    private readonly model: JobsModel,
    private readonly commands: CommandRegistry
  ) {
    this.node = document.createElement('section');
    this.node.className = 'jp-hpcserve-jobs';
    this.node.setAttribute('aria-label', 'Jobs');

    const header = document.createElement('div');
    header.className = 'jp-hpcserve-jobs-header';
    const title = document.createElement('h3');
    title.textContent = 'Jobs';
    this._count = document.createElement('span');
    this._count.className = 'jp-hpcserve-jobs-count';
    const buttons = document.createElement('div');
    buttons.className = 'jp-hpcserve-sidebar-buttons';
    buttons.append(
      actionButton('clear-ended-jobs', clearIcon, 'Clear ended jobs from the list', () =>
        this.model.clearEnded()
      )
    );
    header.append(title, this._count, buttons);

    this._empty = document.createElement('div');
    this._empty.className = 'jp-hpcserve-jobs-empty';
    this._list = document.createElement('ul');
    this._list.className = 'jp-hpcserve-job-list';
    this.node.append(header, this._empty, this._list);

    model.changed.connect(this._render, this);
    this._render();
    this._timer = window.setInterval(() => this._renderTimes(), 1000);
  }

  dispose(): void {
    window.clearInterval(this._timer);
    this.model.changed.disconnect(this._render, this);
  }

  private _render(): void {
    const entries = this.model.entries;
    const seen = new Set<string>();
    let previous: HTMLLIElement | null = null;
    for (const { job } of entries) {
      seen.add(job.id);
      let row = this._rows.get(job.id);
      if (!row) {
        row = this._createRow(job);
        this._rows.set(job.id, row);
      }
      this._updateRow(row, job);
      // keep DOM order = model order, moving only what is out of place
      const expected: ChildNode | null = previous ? previous.nextSibling : this._list.firstChild;
      if (expected !== row.node) {
        this._list.insertBefore(row.node, expected);
      }
      previous = row.node;
    }
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.node.remove();
        this._rows.delete(id);
      }
    }
    const live = entries.filter(e => !isEnded(e.job)).length;
    this._count.textContent = live ? `${live} live` : '';
    this._empty.hidden = entries.length > 0;
    this._empty.textContent = !this.model.loaded
      ? 'Loading jobs…'
      : this.model.error
        ? `Cannot list jobs (${this.model.error}).`
        : 'No jobs. Submit one with “hpcserve job submit” in a terminal or ' +
          '“%serve job submit” in a notebook.';
    this._renderTimes(entries);
  }

  private _createRow(job: IJob): IJobRow {
    const el = <K extends keyof HTMLElementTagNameMap>(tag: K, cls: string) => {
      const node = document.createElement(tag);
      node.className = cls;
      return node;
    };
    const node = el('li', 'jp-hpcserve-job');
    node.dataset.jobId = job.id;
    const head = el('div', 'jp-hpcserve-job-head');
    const name = el('span', 'jp-hpcserve-job-name');
    const time = el('span', 'jp-hpcserve-job-time');
    const badge = el('span', 'jp-hpcserve-badge');
    head.append(name, time, badge);
    const meta = el('div', 'jp-hpcserve-job-meta');
    const bar = el('div', 'jp-hpcserve-progress');
    bar.setAttribute('role', 'progressbar');
    bar.setAttribute('aria-valuemin', '0');
    const ok = el('div', 'jp-hpcserve-progress-ok');
    const bad = el('div', 'jp-hpcserve-progress-failed');
    bar.append(ok, bad);
    const line = el('div', 'jp-hpcserve-job-progress-line');
    const counts = el('span', 'jp-hpcserve-job-counts');
    const eta = el('span', 'jp-hpcserve-job-eta');
    line.append(counts, eta);
    const reason = el('div', 'jp-hpcserve-job-reason');
    const actions = el('div', 'jp-hpcserve-job-actions');
    node.append(head, meta, bar, line, reason, actions);
    return { node, name, time, badge, meta, bar, ok, bad, counts, eta, reason, actions, key: '' };
  }

  private _updateRow(row: IJobRow, job: IJob): void {
    const ended = isEnded(job);
    row.node.dataset.state = job.state;
    row.node.classList.toggle('jp-mod-ended', ended);
    row.name.textContent = job.name;
    row.name.title = `${job.name} (id ${job.id})${job.owner ? `, owner ${job.owner}` : ''}`;
    const flag = ended
      ? ''
      : job.unreachable
        ? 'unreachable'
        : job.cancel_requested
          ? 'cancelling'
          : '';
    row.badge.textContent = flag ? `${job.state} · ${flag}` : job.state;
    row.badge.dataset.state = flag === 'unreachable' ? 'unreachable' : job.state;
    row.meta.textContent = `${job.kind} · ${job.recipe} · ${job.backend} · ${job.target}`;
    row.meta.title = job.output ? `output: ${job.output}` : '';

    row.bar.setAttribute('aria-valuemax', String(job.total));
    row.bar.setAttribute('aria-valuenow', String(job.done));
    row.bar.setAttribute('aria-label', `${job.name}: ${formatCounts(job)} lines`);
    row.bar.dataset.failed = String(job.failed);
    row.ok.style.width = `${percent(job.done - job.failed, job.total)}%`;
    row.bad.style.width = `${percent(job.failed, job.total)}%`;
    row.counts.textContent = formatCounts(job);

    row.reason.textContent = job.reason || '';
    row.reason.hidden = !job.reason;
    const log =
      job.state === 'failed' && job.log_tail
        ? '\n\n' + job.log_tail.split('\n').slice(-TOOLTIP_LOG_LINES).join('\n')
        : '';
    row.reason.title = (job.reason || '') + log;

    const download = hasResults(job);
    const key = `${ended}:${download}`;
    if (row.key !== key) {
      row.key = key;
      const id = job.id;
      const buttons: HTMLButtonElement[] = [];
      if (!ended) {
        buttons.push(
          actionButton('cancel-job', stopIcon, 'Cancel the job…', () =>
            void this.commands.execute(CommandIDs.cancelJob, { id })
          )
        );
      }
      if (download) {
        buttons.push(
          actionButton('download-results', downloadIcon, 'Download the results (JSONL)', () =>
            void this.commands.execute(CommandIDs.downloadJobResults, { id })
          )
        );
      }
      row.actions.replaceChildren(...buttons);
      row.actions.hidden = buttons.length === 0;
    }
  }

  /** Elapsed time and ETA, counted on in the page between the server's updates. */
  private _renderTimes(entries: IJobEntry[] = this.model.entries): void {
    const now = performance.now();
    for (const { job, receivedAt } of entries) {
      const row = this._rows.get(job.id);
      if (!row) {
        continue;
      }
      const since = (now - receivedAt) / 1000;
      if (isEnded(job)) {
        row.time.textContent = `ran ${formatAge(job.elapsed_s)}`;
        row.eta.textContent = '';
      } else {
        row.time.textContent = formatAge(job.elapsed_s + since);
        row.eta.textContent =
          job.eta_s === null || job.eta_s === undefined
            ? ''
            : `ETA ${formatAge(Math.max(0, job.eta_s - since))}`;
      }
      row.time.title = 'elapsed since it was submitted';
    }
  }

  private _list: HTMLUListElement;
  private _empty: HTMLDivElement;
  private _count: HTMLSpanElement;
  private _rows = new Map<string, IJobRow>();
  private _timer: number;
}
