/**
 * The server extension's Server-Sent Events (GET /hpcserve/api/events), read with fetch
 * through ServerConnection rather than EventSource: EventSource cannot send the
 * `Authorization: token` header, so it would work only where the login cookie does.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { ISessionEvent, streamAPI } from './api';

/** Incremental parser of the text/event-stream format (the parts the server uses). */
export class SSEParser {
  constructor(private readonly onMessage: (data: string, event: string) => void) {}

  /** Milliseconds the server asked to wait before reconnecting (`retry:`), if it did. */
  retry: number | null = null;

  push(text: string): void {
    this._buffer += text;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this._buffer);
      if (!match) {
        return;
      }
      const line = this._buffer.slice(0, match.index);
      this._buffer = this._buffer.slice(match.index + match[0].length);
      this._line(line);
    }
  }

  private _line(line: string): void {
    if (line === '') {
      if (this._data.length) {
        this.onMessage(this._data.join('\n'), this._event || 'message');
      }
      this._data = [];
      this._event = '';
      return;
    }
    if (line.startsWith(':')) {
      return; // a comment (the server's keepalive)
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'data') {
      this._data.push(value);
    } else if (field === 'event') {
      this._event = value;
    } else if (field === 'retry' && /^\d+$/.test(value)) {
      this.retry = parseInt(value, 10);
    }
  }

  private _buffer = '';
  private _data: string[] = [];
  private _event = '';
}

export type ConnectionState = 'connecting' | 'open' | 'closed';

/** The event stream, reconnecting after a drop until disposed. */
export class SessionEventStream {
  get message(): ISignal<this, ISessionEvent> {
    return this._message;
  }

  get stateChanged(): ISignal<this, ConnectionState> {
    return this._stateChanged;
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** Why the last connection failed (for a tooltip), or ''. */
  lastError = '';

  start(): void {
    if (!this._running) {
      this._running = true;
      void this._loop();
    }
  }

  /** Drop the current connection and connect again at once. */
  reconnect(): void {
    this._wakeup?.();
    this._abort?.abort();
  }

  dispose(): void {
    this._running = false;
    this._abort?.abort();
    this._wakeup?.();
  }

  private async _loop(): Promise<void> {
    let delay = 3000;
    let failures = 0;
    while (this._running) {
      const abort = new AbortController();
      this._abort = abort;
      this._setState('connecting');
      const parser = new SSEParser((data, event) => {
        if (event !== 'message') {
          return;
        }
        let msg: ISessionEvent;
        try {
          msg = JSON.parse(data);
        } catch {
          return;
        }
        if (msg.type === 'resync') {
          // the server dropped us as a slow reader: a fresh snapshot comes on reconnect
          abort.abort();
          return;
        }
        this._message.emit(msg);
      });
      let first = true;
      try {
        await streamAPI(
          'events',
          text => {
            if (first) {
              first = false;
              this.lastError = '';
              this._setState('open');
            }
            parser.push(text);
          },
          abort.signal
        );
        this.lastError = 'the server closed the event stream';
      } catch (err) {
        if (!abort.signal.aborted) {
          this.lastError = (err as Error)?.message || String(err);
        }
      }
      if (!this._running) {
        break;
      }
      this._setState('closed');
      // back off while the server refuses (e.g. the server extension is not enabled)
      failures = first ? failures + 1 : 0;
      delay = Math.min(60000, (parser.retry ?? 3000) * 2 ** Math.max(0, failures - 1));
      if (!abort.signal.aborted) {
        await new Promise<void>(resolve => {
          this._wakeup = resolve;
          setTimeout(resolve, delay);
        });
        this._wakeup = null;
      }
    }
    this._setState('closed');
  }

  private _setState(state: ConnectionState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private _running = false;
  private _abort: AbortController | null = null;
  private _wakeup: (() => void) | null = null;
  private _state: ConnectionState = 'closed';
  private _message = new Signal<this, ISessionEvent>(this);
  private _stateChanged = new Signal<this, ConnectionState>(this);
}
