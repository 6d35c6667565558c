/**
 * A main-area panel following a session's engine log (GET sessions/{id}/logs?follow=1).
 */
import { MainAreaWidget, ToolbarButton } from '@jupyterlab/apputils';
import { clearIcon, downloadIcon, refreshIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { api, ISession, streamAPI, TERMINAL_STATES } from './api';
import { logIcon } from './icons';

/** Keep at most this many characters on screen (the full log stays on the server). */
const MAX_CHARS = 2_000_000;

export class LogView extends Widget {
  constructor(readonly sessionId: string) {
    super();
    this.addClass('jp-hpcserve-logs');
    this._status = document.createElement('div');
    this._status.className = 'jp-hpcserve-logs-status';
    this._pre = document.createElement('pre');
    this._pre.className = 'jp-hpcserve-logs-text';
    this._pre.tabIndex = 0;
    this.node.append(this._status, this._pre);
    this._pre.addEventListener('scroll', () => {
      const p = this._pre;
      this._stick = p.scrollHeight - p.scrollTop - p.clientHeight < 24;
    });
  }

  /** (Re)start following from the beginning of the log. */
  restart(): void {
    this._abort?.abort();
    this.clear();
    this._stick = true;
    void this._follow();
  }

  clear(): void {
    this._pre.textContent = '';
    this._length = 0;
  }

  get text(): string {
    return this._pre.textContent ?? '';
  }

  dispose(): void {
    this._abort?.abort();
    this._disposedFlag = true;
    super.dispose();
  }

  private async _follow(): Promise<void> {
    const abort = new AbortController();
    this._abort = abort;
    const path = `sessions/${encodeURIComponent(this.sessionId)}/logs?follow=1&from_start=1`;
    let attempt = 0;
    while (!abort.signal.aborted && !this._disposedFlag) {
      this._setStatus('following the engine log…', 'open');
      let received = false;
      try {
        await streamAPI(
          path,
          text => {
            received = true;
            this._append(text);
          },
          abort.signal
        );
      } catch (err) {
        if (abort.signal.aborted) {
          return;
        }
        this._setStatus(`log stream failed: ${(err as Error)?.message ?? err}`, 'error');
        if ((err as { status?: number }).status === 404) {
          return;
        }
      }
      if (abort.signal.aborted) {
        return;
      }
      let session: ISession | null = null;
      try {
        session = await api.session(this.sessionId);
      } catch {
        // unknown: retry below
      }
      if (session && TERMINAL_STATES.has(session.state)) {
        const why = session.reason ? `: ${session.reason}` : '';
        this._setStatus(`session ${session.state}${why}; the log is complete`, 'ended');
        return;
      }
      // The stream ended while the session lives (server restart, proxy timeout): resume.
      attempt = received ? 0 : attempt + 1;
      await new Promise(r => setTimeout(r, Math.min(10000, 1000 * 2 ** attempt)));
      if (!abort.signal.aborted) {
        this.clear(); // the new stream starts from the beginning again
      }
    }
  }

  private _append(text: string): void {
    const node = this._pre;
    this._length += text.length;
    if (this._length > MAX_CHARS) {
      const all = (node.textContent ?? '') + text;
      node.textContent = '[… earlier lines dropped …]\n' + all.slice(all.length - MAX_CHARS / 2);
      this._length = node.textContent.length;
    } else {
      node.append(text);
    }
    if (this._stick) {
      node.scrollTop = node.scrollHeight;
    }
  }

  private _setStatus(text: string, kind: 'open' | 'error' | 'ended'): void {
    this._status.textContent = text;
    this._status.dataset.kind = kind;
  }

  private _pre: HTMLPreElement;
  private _status: HTMLDivElement;
  private _abort: AbortController | null = null;
  private _stick = true;
  private _length = 0;
  private _disposedFlag = false;
}

export function createLogPanel(session: ISession): MainAreaWidget<LogView> {
  const content = new LogView(session.id);
  const panel = new MainAreaWidget({ content });
  panel.id = `hpcserve-logs-${session.id}`;
  panel.title.label = `Log: ${session.name}`;
  panel.title.caption = `Engine log of ${session.name} (${session.recipe} on ${session.target})`;
  panel.title.icon = logIcon;
  panel.title.closable = true;
  panel.addClass('jp-hpcserve-logs-panel');
  panel.toolbar.addItem(
    'restart',
    new ToolbarButton({
      icon: refreshIcon,
      tooltip: 'Reload the log from the beginning',
      onClick: () => content.restart()
    })
  );
  panel.toolbar.addItem(
    'clear',
    new ToolbarButton({
      icon: clearIcon,
      tooltip: 'Clear the view (the log itself is kept)',
      onClick: () => content.clear()
    })
  );
  panel.toolbar.addItem(
    'download',
    new ToolbarButton({
      icon: downloadIcon,
      tooltip: 'Save the log shown as a text file',
      onClick: () => {
        const blob = new Blob([content.text], { type: 'text/plain' });
        const a = document.createElement('a');
        a.href = URL.createObjectURL(blob);
        a.download = `${session.name}.log`;
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 1000);
      }
    })
  );
  content.restart();
  return panel;
}
