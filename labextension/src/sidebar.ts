/**
 * The left sidebar panel: one row per session (name, state, recipe, backend, target, age,
 * time left, idle stop, queue reason, live metrics) with its actions, updated in place from
 * the SessionsModel.
 */
import { LabIcon, addIcon, clearIcon, refreshIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { ISession, ISessionMetrics, TERMINAL_STATES } from './api';
import { CommandIDs } from './commands';
import { MetricsPoller, metricsText, sparklineSvg } from './metrics';
import { SessionsModel } from './model';

/** Under this many seconds left, the countdown turns amber (the server's default warning). */
export const EXPIRING_S = 600;

export interface IRowAction {
  action: string;
  command: string;
  icon: LabIcon;
  label: string;
  /** Shown for ended sessions too. */
  ended?: boolean;
}

/** "42s", "5m", "2h 5m", "3d 4h". */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m}m`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return m % 60 ? `${h}h ${m % 60}m` : `${h}h`;
  }
  const d = Math.floor(h / 24);
  return h % 24 ? `${d}d ${h % 24}h` : `${d}d`;
}

/** Time left: "2h 5m" and "45m" far off, "9m 05s" within the last ten minutes. */
export function formatLeft(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s >= EXPIRING_S || s < 60) {
    return formatAge(s);
  }
  return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
}

/** The flags shown beside the state of a live session. */
function flagsOf(s: ISession): string[] {
  const flags: string[] = [];
  if (s.unreachable) {
    flags.push('unreachable');
  }
  if (s.degraded) {
    flags.push('degraded');
  }
  return flags;
}

/** A small icon button carrying `data-action` (what the browser tests click). */
export function actionButton(
  action: string,
  icon: LabIcon,
  label: string,
  onClick: () => void
): HTMLButtonElement {
  const b = document.createElement('button');
  b.className = 'jp-Button jp-mod-minimal jp-hpcserve-button';
  b.type = 'button';
  b.title = label;
  b.setAttribute('aria-label', label);
  b.dataset.action = action;
  icon.element({ container: b, elementPosition: 'center', height: '16px', width: '16px' });
  b.addEventListener('click', e => {
    e.stopPropagation();
    onClick();
  });
  return b;
}

/** A part of the sidebar below the sessions, with its own DOM and lifetime. */
export interface ISidebarSection {
  readonly node: HTMLElement;
  dispose(): void;
}

interface IRow {
  node: HTMLLIElement;
  name: HTMLSpanElement;
  badge: HTMLSpanElement;
  meta: HTMLDivElement;
  age: HTMLSpanElement;
  time: HTMLDivElement;
  left: HTMLSpanElement;
  idle: HTMLSpanElement;
  metrics: HTMLDivElement;
  reason: HTMLDivElement;
  actions: HTMLDivElement;
  key: string;
}

export class SessionsPanel extends Widget {
  constructor(
    private readonly model: SessionsModel,
    private readonly commands: CommandRegistry,
    private readonly rowActions: IRowAction[]
  ) {
    super();
    this.id = 'hpcserve-sessions';
    this.addClass('jp-hpcserve-sidebar');

    const header = document.createElement('div');
    header.className = 'jp-hpcserve-sidebar-header';
    const title = document.createElement('h2');
    title.textContent = 'AI Sessions';
    this._dot = document.createElement('span');
    this._dot.className = 'jp-hpcserve-connection';
    const buttons = document.createElement('div');
    buttons.className = 'jp-hpcserve-sidebar-buttons';
    buttons.append(
      actionButton('launch', addIcon, 'Launch a session…', () =>
        void this.commands.execute(CommandIDs.launch)
      ),
      actionButton('reconnect', refreshIcon, 'Reconnect to the event stream', () =>
        this.model.reconnect()
      ),
      actionButton('clear-ended', clearIcon, 'Clear ended sessions from the list', () =>
        this.model.clearEnded()
      )
    );
    header.append(title, this._dot, buttons);

    this._list = document.createElement('ul');
    this._list.className = 'jp-hpcserve-session-list';
    this._empty = document.createElement('div');
    this._empty.className = 'jp-hpcserve-empty';
    this.node.append(header, this._empty, this._list);

    model.changed.connect(this._render, this);
    model.connectionChanged.connect(this._renderConnection, this);
    this._render();
    this._renderConnection();
    this._timer = window.setInterval(() => this._renderAges(), 1000);
    this._metrics = new MetricsPoller(
      () => this.isVisible,
      () => this.model.entries.map(e => e.session),
      (id, m) => this._renderMetrics(id, m)
    );
  }

  dispose(): void {
    window.clearInterval(this._timer);
    this._metrics.dispose();
    for (const section of this._sections) {
      section.dispose();
    }
    super.dispose();
  }

  /** Show `section` below the sessions (the jobs); it is disposed with the panel. */
  addSection(section: ISidebarSection): void {
    this._sections.push(section);
    this.node.append(section.node);
  }

  /** Shown again: the metrics are asked for at once, not at the next interval. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._metrics.poll();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this._metrics.poll();
  }

  private _renderConnection(): void {
    const state = this.model.connection;
    this._dot.dataset.state = state;
    this._dot.title =
      state === 'open'
        ? 'Live: updates stream from the server'
        : state === 'connecting'
          ? 'Connecting to the server…'
          : `Disconnected${this.model.connectionError ? ': ' + this.model.connectionError : ''}; retrying`;
    this._renderEmpty();
  }

  private _renderEmpty(): void {
    const none = this._rows.size === 0;
    this._empty.hidden = !none;
    if (none) {
      const error = this.model.connectionError;
      this._empty.textContent = this.model.loaded
        ? 'No sessions. Launch one with + (or the command palette: “Launch AI Session”).'
        : this.model.connection === 'closed' && error
          ? `Cannot reach the hpcserve server extension (${error}). Is it enabled? ` +
            '`jupyter server extension list` tells. Retrying…'
          : 'Loading sessions…';
    }
  }

  private _render(): void {
    const entries = this.model.entries;
    const seen = new Set<string>();
    let previous: HTMLLIElement | null = null;
    for (const entry of entries) {
      const s = entry.session;
      seen.add(s.id);
      let row = this._rows.get(s.id);
      if (!row) {
        row = this._createRow(s);
        this._rows.set(s.id, row);
      }
      this._updateRow(row, s);
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
    this._renderAges();
    this._renderEmpty();
  }

  private _createRow(s: ISession): IRow {
    const node = document.createElement('li');
    node.className = 'jp-hpcserve-session';
    node.dataset.sessionId = s.id;
    const head = document.createElement('div');
    head.className = 'jp-hpcserve-session-head';
    const name = document.createElement('span');
    name.className = 'jp-hpcserve-session-name';
    const badge = document.createElement('span');
    badge.className = 'jp-hpcserve-badge';
    const age = document.createElement('span');
    age.className = 'jp-hpcserve-session-age';
    head.append(name, age, badge);
    const meta = document.createElement('div');
    meta.className = 'jp-hpcserve-session-meta';
    const time = document.createElement('div');
    time.className = 'jp-hpcserve-session-time';
    const left = document.createElement('span');
    left.className = 'jp-hpcserve-session-left';
    const idle = document.createElement('span');
    idle.className = 'jp-hpcserve-session-idle';
    time.append(left, idle);
    const metrics = document.createElement('div');
    metrics.className = 'jp-hpcserve-metrics';
    metrics.hidden = true;
    const reason = document.createElement('div');
    reason.className = 'jp-hpcserve-session-reason';
    const actions = document.createElement('div');
    actions.className = 'jp-hpcserve-session-actions';
    node.append(head, meta, time, metrics, reason, actions);
    return { node, name, badge, meta, age, time, left, idle, metrics, reason, actions, key: '' };
  }

  private _updateRow(row: IRow, s: ISession): void {
    const ended = TERMINAL_STATES.has(s.state);
    row.node.dataset.state = s.state;
    row.node.classList.toggle('jp-mod-ended', ended);
    row.name.textContent = s.name;
    row.name.title = `${s.name} (id ${s.id})${s.owner ? `, owner ${s.owner}` : ''}`;
    const flags = ended ? [] : flagsOf(s);
    row.badge.textContent = [s.state, ...flags].join(' · ');
    row.badge.dataset.state = flags[0] ?? s.state;
    const why = s.degraded_reason ? `: ${s.degraded_reason}` : '';
    row.badge.title = [
      s.unreachable && !ended ? 'the target is unreachable: state as last seen' : '',
      s.degraded && !ended ? `the engine stopped answering health checks${why}` : ''
    ]
      .filter(Boolean)
      .join('\n');
    row.node.classList.toggle('jp-hpcserve-degraded', Boolean(s.degraded) && !ended);
    if (s.state !== 'ready') {
      this._renderMetrics(s.id, null);
    }
    row.meta.textContent = `${s.recipe} · ${s.backend} · ${s.target}`;
    row.meta.title = s.model ? `model: ${s.model}` : '';
    row.reason.textContent = s.reason || '';
    row.reason.hidden = !s.reason;
    row.reason.title = s.reason || '';
    const key = `${ended}`;
    if (row.key !== key) {
      row.key = key;
      row.actions.replaceChildren(
        ...this.rowActions
          .filter(a => !ended || a.ended)
          .map(a =>
            actionButton(a.action, a.icon, a.label, () =>
              void this.commands.execute(a.command, { id: row.node.dataset.sessionId! })
            )
          )
      );
    }
  }

  private _renderAges(): void {
    const now = performance.now();
    for (const entry of this.model.entries) {
      const row = this._rows.get(entry.session.id);
      if (!row) {
        continue;
      }
      const s = entry.session;
      const since = (now - entry.receivedAt) / 1000;
      if (TERMINAL_STATES.has(s.state) && s.ended_at) {
        row.age.textContent = `ran ${formatAge(s.ended_at - s.created_at)}`;
      } else {
        row.age.textContent = formatAge(s.age_s + since);
      }
      this._renderTime(row, s, since);
    }
  }

  /** The countdown to the session's end (amber near it) and to its idle autostop. */
  private _renderTime(row: IRow, s: ISession, since: number): void {
    const live = !TERMINAL_STATES.has(s.state);
    const hasLeft = live && typeof s.time_left_s === 'number';
    const hasIdle = live && s.state === 'ready' && typeof s.idle_stop_in_s === 'number';
    row.time.hidden = !hasLeft && !hasIdle;
    row.left.hidden = !hasLeft;
    row.idle.hidden = !hasIdle;
    if (hasLeft) {
      const left = Math.max(0, s.time_left_s! - since);
      row.left.textContent = `${formatLeft(left)} left`;
      row.left.dataset.leftS = String(Math.floor(left));
      row.left.classList.toggle('jp-hpcserve-expiring', left < EXPIRING_S);
      const ends = s.ends_at ? new Date(s.ends_at) : null;
      row.left.title =
        (ends && !isNaN(ends.getTime()) ? `Ends at ${ends.toLocaleString()}` : 'Time left') +
        (s.time_limit_s ? ` (limit ${formatAge(s.time_limit_s)})` : '') +
        ': the nearer of the target’s time limit and the max lifetime. ' +
        'Extend it, or relaunch it to carry on.';
    } else {
      row.left.classList.remove('jp-hpcserve-expiring');
      delete row.left.dataset.leftS;
    }
    if (hasIdle) {
      const idle = Math.max(0, s.idle_stop_in_s! - since);
      row.idle.textContent = `idle stop in ${formatAge(idle)}`;
      row.idle.dataset.idleS = String(Math.floor(idle));
      row.idle.title =
        'Stopped after this long without requests (idle autostop); a request or keepalive ' +
        'resets it';
    }
  }

  /** The metrics' sparkline and numbers of a ready session; hidden without metrics. */
  private _renderMetrics(id: string, m: ISessionMetrics | null): void {
    const row = this._rows.get(id);
    if (!row) {
      return;
    }
    if (!m || this.model.get(id)?.state !== 'ready') {
      row.metrics.hidden = true;
      row.metrics.replaceChildren();
      delete row.metrics.dataset.available;
      return;
    }
    row.metrics.hidden = false;
    row.metrics.dataset.available = String(m.available);
    if (!m.available) {
      const text = document.createElement('span');
      text.className = 'jp-hpcserve-metrics-text';
      text.textContent = 'no metrics';
      row.metrics.title = m.reason || 'the engine gives no metrics';
      row.metrics.replaceChildren(text);
      return;
    }
    const { text, title } = metricsText(m);
    const label = document.createElement('span');
    label.className = 'jp-hpcserve-metrics-text';
    label.textContent = text;
    row.metrics.title = title;
    row.metrics.replaceChildren(sparklineSvg(m.history), label);
  }

  private _list: HTMLUListElement;
  private _empty: HTMLDivElement;
  private _dot: HTMLSpanElement;
  private _rows = new Map<string, IRow>();
  private _sections: ISidebarSection[] = [];
  private _timer: number;
  private _metrics: MetricsPoller;
}
