/**
 * The job commands the sidebar's job rows run: cancel (asking first, as Stop does for a
 * session) and download the results. Commands rather than click handlers, so the palette,
 * keyboard shortcuts and other extensions can run them with `{ id }` too.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { downloadIcon, stopIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';

import { CommandIDs } from './commands';
import { IJob, isEnded, JobsModel, jobsApi } from './jobs';
import { notifyError } from './notify';

/** Save `blob` as a file through the browser's download (the page keeps no copy). */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function addJobCommands(commands: CommandRegistry, model: JobsModel): void {
  const jobOf = async (args: { id?: unknown }): Promise<IJob | null> => {
    const id = String(args.id ?? '');
    if (!id) {
      Notification.error('No job given (the command needs an `id` argument)');
      return null;
    }
    const known = model.get(id);
    if (known) {
      return known;
    }
    try {
      const fresh = await jobsApi.job(id);
      model.upsert(fresh);
      return fresh;
    } catch (err) {
      notifyError(`Job ${id}`, err);
      return null;
    }
  };

  commands.addCommand(CommandIDs.cancelJob, {
    label: 'Cancel AI Job…',
    caption: 'Cancel the job (asks first); the output written so far is kept',
    icon: stopIcon,
    execute: async args => {
      const job = await jobOf(args);
      if (!job) {
        return;
      }
      if (isEnded(job)) {
        Notification.info(`${job.name} has already ended (${job.state})`, { autoClose: 4000 });
        return;
      }
      const result = await showDialog({
        title: `Cancel ${job.name}?`,
        body:
          `The ${job.recipe} job on ${job.target} stops and frees what it holds. ` +
          `The ${job.done} of ${job.total} answers written so far are kept; ` +
          '`hpcserve job submit … --resume ID` finishes the rest.',
        buttons: [
          Dialog.cancelButton({ label: 'Keep running' }),
          Dialog.warnButton({ label: 'Cancel job' })
        ]
      });
      if (!result.button.accept) {
        return;
      }
      try {
        model.upsert(await jobsApi.cancel(job.id));
      } catch (err) {
        notifyError(`Cancelling ${job.name} failed`, err);
      }
    }
  });

  commands.addCommand(CommandIDs.downloadJobResults, {
    label: 'Download AI Job Results',
    caption: 'Save the job’s output JSONL (one answer per input line)',
    icon: downloadIcon,
    execute: async args => {
      const job = await jobOf(args);
      if (!job) {
        return;
      }
      try {
        saveBlob(await jobsApi.results(job.id), `${job.name}.jsonl`);
      } catch (err) {
        notifyError(`Downloading the results of ${job.name} failed`, err);
      }
    }
  });
}
