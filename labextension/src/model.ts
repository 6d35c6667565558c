/**
 * The sessions the sidebar shows, kept current from the event stream.
 *
 * The stream's snapshot holds the live sessions only; a session seen live in this page that
 * ends stays listed with its final state until the user clears ended sessions.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { api, ISession, ISessionEvent, TERMINAL_STATES } from './api';
import { ConnectionState, SessionEventStream } from './events';

export interface ISessionEntry {
  session: ISession;
  /** performance.now() when `session` arrived: ages count on from session.age_s. */
  receivedAt: number;
}

export class SessionsModel {
  constructor() {
    this._stream.message.connect((_, msg) => this._onEvent(msg));
    this._stream.stateChanged.connect((_, state) => this._connection.emit(state));
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Every message of the event stream (the jobs model reads its job changes from it). */
  get events(): ISignal<SessionEventStream, ISessionEvent> {
    return this._stream.message;
  }

  get connectionChanged(): ISignal<this, ConnectionState> {
    return this._connection;
  }

  get connection(): ConnectionState {
    return this._stream.state;
  }

  get connectionError(): string {
    return this._stream.lastError;
  }

  /** Whether the first snapshot came. */
  get loaded(): boolean {
    return this._loaded;
  }

  start(): void {
    this._stream.start();
  }

  reconnect(): void {
    this._stream.reconnect();
  }

  /** Sessions, live first, each group newest first. */
  get entries(): ISessionEntry[] {
    const all = [...this._entries.values()];
    const live = (e: ISessionEntry) => !TERMINAL_STATES.has(e.session.state);
    return all.sort(
      (a, b) =>
        Number(live(b)) - Number(live(a)) || b.session.created_at - a.session.created_at
    );
  }

  get(id: string): ISession | undefined {
    return this._entries.get(id)?.session;
  }

  /** Add or update a session (from an event or an API answer); older versions are ignored. */
  upsert(session: ISession): void {
    const old = this._entries.get(session.id);
    if (old && (old.session.version ?? 0) > (session.version ?? 0)) {
      return;
    }
    this._entries.set(session.id, { session, receivedAt: performance.now() });
    this._changed.emit();
  }

  /** Forget the sessions that have ended. */
  clearEnded(): void {
    for (const [id, entry] of this._entries) {
      if (TERMINAL_STATES.has(entry.session.state)) {
        this._entries.delete(id);
      }
    }
    this._changed.emit();
  }

  dispose(): void {
    this._stream.dispose();
    Signal.clearData(this);
  }

  private _onEvent(msg: ISessionEvent): void {
    if (msg.type === 'snapshot' && Array.isArray(msg.sessions)) {
      const live = new Set(msg.sessions.map(s => s.id));
      for (const s of msg.sessions) {
        this._entries.set(s.id, { session: s, receivedAt: performance.now() });
      }
      // Sessions shown live that are not live any more ended while we were disconnected.
      const gone = [...this._entries.values()]
        .map(e => e.session)
        .filter(s => !live.has(s.id) && !TERMINAL_STATES.has(s.state));
      for (const s of gone) {
        void api.session(s.id).then(
          fresh => this.upsert(fresh),
          () => {
            this._entries.delete(s.id);
            this._changed.emit();
          }
        );
      }
      this._loaded = true;
      this._changed.emit();
    } else if (msg.session) {
      this.upsert(msg.session);
    }
  }

  private _stream = new SessionEventStream();
  private _entries = new Map<string, ISessionEntry>();
  private _loaded = false;
  private _changed = new Signal<this, void>(this);
  private _connection = new Signal<this, ConnectionState>(this);
}
