/**
 * hpcserve-jupyter's JupyterLab extension: a sidebar of AI serving sessions and one-off jobs
 * (live from the server extension's event stream), a launch dialog, log panels and notebook
 * helpers.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Clipboard,
  Dialog,
  ICommandPalette,
  InputDialog,
  MainAreaWidget,
  Notification,
  WidgetTracker,
  showDialog
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import {
  addBelowIcon,
  copyIcon,
  historyIcon,
  linkIcon,
  redoIcon,
  stopIcon
} from '@jupyterlab/ui-components';

import { api, ISession, ISessionEvent, openaiBaseUrl } from './api';
import { CommandIDs } from './commands';
import { jupyterAiIcon, keepaliveIcon, logIcon, sessionsIcon } from './icons';
import { addJobCommands } from './jobcommands';
import { JobsModel } from './jobs';
import { JobsSection } from './jobsview';
import { askLaunch, ILaunchFields } from './launch';
import { createLogPanel, LogView } from './logs';
import { SessionsModel } from './model';
import { notifyError } from './notify';
import { IRowAction, SessionsPanel } from './sidebar';

const CATEGORY = 'AI Sessions';

/** Events that warn about a session (a JupyterLab notification each). */
const WARNINGS: ReadonlySet<string> = new Set(['expiring', 'idle-expiring', 'degraded']);

export { notifyError };

/** The text of the `%%serve` cell inserted for a session. */
export function serveCell(session: Pick<ISession, 'id' | 'name'>): string {
  return `%%serve ${session.id}\nIn one sentence: what can you do?`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'hpcserve-jupyter:plugin',
  description: 'Launch, watch, prompt and stop AI serving sessions; follow jobs (hpcserve).',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ) => {
    const { commands, shell } = app;
    const model = new SessionsModel();
    // connected before the stream starts, so the first snapshot's jobs are not missed
    const jobs = new JobsModel(model.events);
    model.start();

    const sessionOf = async (args: { id?: unknown }): Promise<ISession | null> => {
      const id = String(args.id ?? '');
      if (!id) {
        Notification.error('No session given (the command needs an `id` argument)');
        return null;
      }
      const known = model.get(id);
      if (known) {
        return known;
      }
      try {
        const fresh = await api.session(id);
        model.upsert(fresh);
        return fresh;
      } catch (err) {
        notifyError(`Session ${id}`, err);
        return null;
      }
    };

    // ------------------------------------------------------------ sidebar

    const rowActions: IRowAction[] = [
      {
        action: 'logs',
        command: CommandIDs.showLogs,
        icon: logIcon,
        label: 'Show log',
        ended: true
      },
      {
        action: 'keepalive',
        command: CommandIDs.keepalive,
        icon: keepaliveIcon,
        label: 'Keep alive (reset the idle timer)'
      },
      {
        action: 'extend',
        command: CommandIDs.extend,
        icon: historyIcon,
        label: 'Extend (more time, where the target allows)…'
      },
      {
        action: 'relaunch',
        command: CommandIDs.relaunch,
        icon: redoIcon,
        label: 'Relaunch (a new session with the same settings)',
        ended: true
      },
      {
        action: 'copy-url',
        command: CommandIDs.copyBaseUrl,
        icon: linkIcon,
        label: 'Copy the OpenAI base URL'
      },
      {
        action: 'copy-model',
        command: CommandIDs.copyModel,
        icon: copyIcon,
        label: 'Copy the model name'
      },
      {
        action: 'insert-cell',
        command: CommandIDs.insertCell,
        icon: addBelowIcon,
        label: 'Insert a %%serve cell into the notebook'
      },
      {
        action: 'jupyter-ai',
        command: CommandIDs.useInJupyterAi,
        icon: jupyterAiIcon,
        label: 'Use in Jupyter AI (a model in Jupyternaut’s picker)'
      },
      { action: 'stop', command: CommandIDs.stop, icon: stopIcon, label: 'Stop…' }
    ];
    const sidebar = new SessionsPanel(model, commands, rowActions);
    sidebar.title.icon = sessionsIcon;
    sidebar.title.caption = 'AI Sessions (hpcserve)';
    sidebar.addSection(new JobsSection(jobs, commands));
    addJobCommands(commands, jobs);
    shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, 'hpcserve-sessions');

    commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show AI Sessions Panel',
      caption: 'Open the sidebar listing the AI serving sessions',
      icon: sessionsIcon,
      execute: () => shell.activateById(sidebar.id)
    });

    // ------------------------------------------------------------ launch

    let lastFields: Partial<ILaunchFields> = {};
    commands.addCommand(CommandIDs.launch, {
      label: args => (args.isPalette ? 'Launch AI Session…' : 'Launch…'),
      caption: 'Launch an AI serving session from a recipe',
      icon: args => (args.isPalette ? undefined : sessionsIcon),
      execute: async () => {
        let recipes, targets;
        try {
          [recipes, targets] = await Promise.all([api.recipes(), api.targets()]);
        } catch (err) {
          notifyError('Cannot list recipes and targets', err);
          return;
        }
        const broken = Object.entries(recipes.errors ?? {});
        if (broken.length) {
          Notification.warning(
            `Skipped ${broken.length} broken recipe file(s): ` +
              broken.map(([file, msg]) => `${file}: ${msg}`).join('; '),
            { autoClose: 10000 }
          );
        }
        const answer = await askLaunch(recipes.recipes, targets.targets, lastFields, problem =>
          Notification.error(problem, { autoClose: 8000 })
        );
        if (!answer) {
          return;
        }
        lastFields = { ...answer.fields, name: '' };
        try {
          const session = await api.launch(answer.request);
          model.upsert(session);
          shell.activateById(sidebar.id);
          Notification.success(`Launched ${session.name} (${session.state})`, { autoClose: 4000 });
        } catch (err) {
          notifyError(`Launching ${answer.request.recipe} failed`, err);
        }
      }
    });

    // ------------------------------------------------------------ session actions

    commands.addCommand(CommandIDs.stop, {
      label: 'Stop AI Session…',
      caption: 'Stop the session (asks first)',
      icon: stopIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        const result = await showDialog({
          title: `Stop ${s.name}?`,
          body:
            `The ${s.backend} engine serving ${s.recipe} on ${s.target} is shut down; ` +
            'notebooks and clients using it lose their endpoint.',
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
        });
        if (!result.button.accept) {
          return;
        }
        try {
          model.upsert(await api.stop(s.id));
        } catch (err) {
          notifyError(`Stopping ${s.name} failed`, err);
        }
      }
    });

    commands.addCommand(CommandIDs.keepalive, {
      label: 'Keep AI Session Alive',
      caption: 'Reset the session’s idle timer',
      icon: keepaliveIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        try {
          model.upsert(await api.keepalive(s.id));
          Notification.success(`${s.name}: idle timer reset`, { autoClose: 3000 });
        } catch (err) {
          notifyError(`Keepalive of ${s.name} failed`, err);
        }
      }
    });

    commands.addCommand(CommandIDs.relaunch, {
      label: 'Relaunch AI Session',
      caption:
        'Launch a new session with the same recipe, backend, target and overrides (the ' +
        'name gets the next number)',
      icon: redoIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        try {
          const fresh = await api.relaunch(s.id, args.name ? String(args.name) : undefined);
          model.upsert(fresh);
          Notification.success(`Relaunched ${s.name} as ${fresh.name} (${fresh.state})`, {
            autoClose: 4000
          });
        } catch (err) {
          notifyError(`Relaunching ${s.name} failed`, err);
        }
      }
    });

    let lastExtend = '30m';
    commands.addCommand(CommandIDs.extend, {
      label: 'Extend AI Session…',
      caption:
        'Ask for more time: the target’s own limit where it can (SLURM: scontrol, often ' +
        'for operators only) and the max lifetime within the server’s bound',
      icon: historyIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        let time = typeof args.time === 'string' ? args.time.trim() : '';
        if (!time) {
          const answer = await InputDialog.getText({
            title: `Extend ${s.name}`,
            label: 'More time (e.g. 30m, 1h, 1:30:00)',
            text: lastExtend,
            placeholder: '30m',
            okLabel: 'Extend'
          });
          time = answer.button.accept ? (answer.value ?? '').trim() : '';
          if (!time) {
            return;
          }
          lastExtend = time;
        }
        try {
          const done = await api.extend(s.id, time);
          model.upsert(done.session);
          Notification.success(`${s.name}: ${done.message || 'extended'}`, {
            autoClose: 6000
          });
        } catch (err) {
          notifyError(`Extending ${s.name} failed`, err);
        }
      }
    });

    // ------------------------------------------------------------ warnings from the server

    const warn = (msg: ISessionEvent) => {
      const s = msg.session;
      if (!s) {
        return;
      }
      const text = `${s.name}: ${msg.message || msg.type}`;
      if (msg.type === 'healthy') {
        Notification.info(text, { autoClose: 6000 });
        return;
      }
      if (!WARNINGS.has(msg.type)) {
        return;
      }
      const act = (label: string, command: string) => ({
        label,
        caption: label,
        callback: () => void commands.execute(command, { id: s.id })
      });
      const actions =
        msg.type === 'expiring'
          ? [act('Extend…', CommandIDs.extend), act('Relaunch', CommandIDs.relaunch)]
          : msg.type === 'idle-expiring'
            ? [act('Keep alive', CommandIDs.keepalive)]
            : [act('Show log', CommandIDs.showLogs)];
      Notification.warning(text, { autoClose: false, actions });
    };
    model.events.connect((_, msg) => warn(msg));

    const logs = new WidgetTracker<MainAreaWidget<LogView>>({ namespace: 'hpcserve-logs' });
    commands.addCommand(CommandIDs.showLogs, {
      label: 'Show AI Session Log',
      caption: 'Follow the engine log of the session',
      icon: logIcon,
      execute: async args => {
        const id = String(args.id ?? '');
        const open = logs.find(w => w.content.sessionId === id);
        if (open) {
          shell.activateById(open.id);
          return;
        }
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        const panel = createLogPanel(s);
        void logs.add(panel);
        shell.add(panel, 'main');
        shell.activateById(panel.id);
      }
    });
    if (restorer) {
      void restorer.restore(logs, {
        command: CommandIDs.showLogs,
        args: w => ({ id: w.content.sessionId }),
        name: w => w.content.sessionId
      });
    }

    const copy = (what: string, text: string) => {
      Clipboard.copyToSystem(text);
      Notification.info(`Copied ${what}: ${text}`, { autoClose: 3000 });
    };
    commands.addCommand(CommandIDs.copyBaseUrl, {
      label: 'Copy OpenAI Base URL',
      caption: 'Copy the OpenAI-compatible base URL of the Jupyter server',
      icon: linkIcon,
      execute: () => copy('the OpenAI base URL', openaiBaseUrl())
    });
    commands.addCommand(CommandIDs.copyModel, {
      label: 'Copy AI Session Model Name',
      caption: 'Copy the model name to use with the OpenAI base URL (the session name)',
      icon: copyIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (s) {
          copy('the model name', s.name);
        }
      }
    });

    commands.addCommand(CommandIDs.useInJupyterAi, {
      label: 'Use AI Session in Jupyter AI',
      caption:
        'Add the session to Jupyter AI’s model picker (through the gateway, with a key ' +
        'for this session only; removed when it stops)',
      icon: jupyterAiIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        try {
          const done = await api.useInJupyterAi(s.id, Boolean(args.default));
          Notification.success(
            `${done.name} is in Jupyter AI’s model picker (${done.model_id})`,
            { autoClose: 5000 }
          );
        } catch (err) {
          notifyError(`Using ${s.name} in Jupyter AI failed`, err);
        }
      }
    });

    commands.addCommand(CommandIDs.insertCell, {
      label: 'Insert %%serve Cell',
      caption: 'Insert a cell prompting the session into the active notebook',
      icon: addBelowIcon,
      execute: async args => {
        const s = await sessionOf(args);
        if (!s) {
          return;
        }
        const panel = notebooks?.currentWidget;
        if (!panel || !panel.content.model) {
          Notification.warning('Open a notebook first: the %%serve cell goes into it', {
            autoClose: 5000
          });
          return;
        }
        const notebook = panel.content;
        const loaded = panel.content.model.sharedModel.cells.some(c =>
          c.getSource().includes('load_ext hpcserve_jupyter')
        );
        const insert = (source: string) => {
          NotebookActions.insertBelow(notebook);
          if (notebook.activeCell?.model.type !== 'code') {
            NotebookActions.changeCellType(notebook, 'code');
          }
          notebook.activeCell?.model.sharedModel.setSource(source);
        };
        if (!loaded) {
          insert('%load_ext hpcserve_jupyter');
        }
        insert(serveCell(s));
        shell.activateById(panel.id);
      }
    });

    if (palette) {
      palette.addItem({ command: CommandIDs.launch, category: CATEGORY, args: { isPalette: true } });
      palette.addItem({ command: CommandIDs.openSidebar, category: CATEGORY });
    }
  }
};

export default plugin;
