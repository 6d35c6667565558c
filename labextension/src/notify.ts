/** Notifications shared by the sidebar's commands. */
import { Notification } from '@jupyterlab/apputils';

import { ApiError } from './api';

/** Show an API failure with the server's own message (`error`, then `detail`). */
export function notifyError(what: string, err: unknown): void {
  const text =
    err instanceof ApiError ? err.text : (err as Error)?.message || String(err ?? 'unknown error');
  Notification.error(`${what}: ${text}`, { autoClose: 10000 });
}
