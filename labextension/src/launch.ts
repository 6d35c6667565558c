/**
 * The launch dialog: recipe (with its description), backend (the recipe's), target, name and
 * resource overrides (gpus, time, extra key=value lines).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { ILaunchRequest, IRecipe, ITarget } from './api';

export interface ILaunchFormValue {
  request: ILaunchRequest | null;
  /** What is wrong with the form, when request is null. */
  problem: string;
  /** The raw field values, to show the dialog again as it was. */
  fields: ILaunchFields;
}

export interface ILaunchFields {
  recipe: string;
  backend: string;
  target: string;
  name: string;
  gpus: string;
  time: string;
  extra: string;
}

let seq = 0;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { className?: string } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

/** Parse `key=value` lines (blank lines and `#` comments skipped). */
export function parseExtra(text: string): { values: Record<string, string>; problem: string } {
  const values: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) {
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) {
      return {
        values,
        problem: `extra settings: "${line}" is not KEY=VALUE (e.g. engine_args.n_ctx=4096)`
      };
    }
    values[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return { values, problem: '' };
}

export class LaunchForm extends Widget {
  constructor(
    private readonly recipes: IRecipe[],
    targets: ITarget[],
    initial: Partial<ILaunchFields> = {}
  ) {
    super();
    this.addClass('jp-hpcserve-launch');
    const id = (what: string) => `jp-hpcserve-launch-${what}-${++seq}`;

    const byCategory = new Map<string, IRecipe[]>();
    for (const r of recipes) {
      const list = byCategory.get(r.category || 'other') ?? [];
      list.push(r);
      byCategory.set(r.category || 'other', list);
    }
    this._recipe = el('select', { id: id('recipe'), name: 'recipe' });
    for (const [category, list] of byCategory) {
      const group = el('optgroup', { label: category });
      for (const r of list) {
        group.append(el('option', { value: r.name, textContent: r.name }));
      }
      this._recipe.append(group);
    }
    this._description = el('div', { className: 'jp-hpcserve-launch-description' });
    this._backend = el('select', { id: id('backend'), name: 'backend' });
    this._target = el('select', { id: id('target'), name: 'target' });
    for (const t of targets) {
      this._target.append(
        el('option', { value: t.name, textContent: t.kind ? `${t.name} (${t.kind})` : t.name })
      );
    }
    this._name = el('input', {
      id: id('name'),
      name: 'name',
      type: 'text',
      placeholder: 'default: RECIPE-N',
      spellcheck: false
    });
    this._gpus = el('input', {
      id: id('gpus'),
      name: 'gpus',
      type: 'number',
      min: '0',
      step: '1'
    });
    this._time = el('input', {
      id: id('time'),
      name: 'time',
      type: 'text',
      spellcheck: false
    });
    this._extra = el('textarea', {
      id: id('extra'),
      name: 'extra',
      rows: 3,
      spellcheck: false,
      placeholder: 'KEY=VALUE per line, e.g.\nengine_args.n_ctx=4096\nenv.HF_HOME=/scratch/hf'
    });

    const row = (label: string, input: HTMLElement, ...after: HTMLElement[]) =>
      el(
        'div',
        { className: 'jp-hpcserve-launch-row' },
        el('label', { htmlFor: input.id, textContent: label }),
        input,
        ...after
      );
    const resources = el(
      'fieldset',
      { className: 'jp-hpcserve-launch-resources' },
      el('legend', { textContent: 'Resources (empty: the recipe’s)' }),
      row('GPUs', this._gpus),
      row('Time limit', this._time),
      row('Extra settings', this._extra)
    );
    this.node.append(
      row('Recipe', this._recipe, this._description),
      row('Backend', this._backend),
      row('Target', this._target),
      row('Name', this._name),
      resources
    );

    this._recipe.addEventListener('change', () => this._recipeChanged());
    if (initial.recipe && recipes.some(r => r.name === initial.recipe)) {
      this._recipe.value = initial.recipe;
    }
    this._recipeChanged();
    if (initial.backend) {
      this._backend.value = initial.backend;
    }
    if (initial.target && targets.some(t => t.name === initial.target)) {
      this._target.value = initial.target;
    } else if (targets.some(t => t.name === 'local')) {
      this._target.value = 'local';
    }
    this._name.value = initial.name ?? '';
    this._gpus.value = initial.gpus ?? '';
    this._time.value = initial.time ?? '';
    this._extra.value = initial.extra ?? '';
  }

  private _recipeChanged(): void {
    const recipe = this.recipes.find(r => r.name === this._recipe.value);
    this._description.textContent = recipe
      ? recipe.description || '(no description)'
      : 'No recipe found: add recipe files (see the hpcserve README).';
    if (recipe?.model) {
      this._description.append(
        el('div', { className: 'jp-hpcserve-launch-model', textContent: `model: ${recipe.model}` })
      );
    }
    const previous = this._backend.value;
    this._backend.replaceChildren(
      ...(recipe?.backends ?? []).map(b => el('option', { value: b, textContent: b }))
    );
    if (recipe?.backends.includes(previous)) {
      this._backend.value = previous;
    }
    const res = recipe?.resources ?? {};
    this._gpus.placeholder = `recipe: ${res.gpus ?? 0}`;
    this._time.placeholder = `recipe: ${res.time ?? 'none'} (e.g. 30m, 2h)`;
  }

  get fields(): ILaunchFields {
    return {
      recipe: this._recipe.value,
      backend: this._backend.value,
      target: this._target.value,
      name: this._name.value.trim(),
      gpus: this._gpus.value.trim(),
      time: this._time.value.trim(),
      extra: this._extra.value
    };
  }

  getValue(): ILaunchFormValue {
    const fields = this.fields;
    const fail = (problem: string) => ({ request: null, problem, fields });
    if (!fields.recipe) {
      return fail('choose a recipe');
    }
    const { values, problem } = parseExtra(fields.extra);
    if (problem) {
      return fail(problem);
    }
    const overrides: Record<string, string> = { ...values };
    if (fields.gpus) {
      if (!/^\d+$/.test(fields.gpus)) {
        return fail(`GPUs must be a whole number, not "${fields.gpus}"`);
      }
      overrides.gpus = fields.gpus;
    }
    if (fields.time) {
      overrides.time = fields.time;
    }
    const request: ILaunchRequest = {
      recipe: fields.recipe,
      target: fields.target || 'local',
      overrides
    };
    if (fields.backend) {
      request.backend = fields.backend;
    }
    if (fields.name) {
      request.name = fields.name;
    }
    return { request, problem: '', fields };
  }

  /** Focus the recipe choice when the dialog opens. */
  protected onAfterAttach(): void {
    this._recipe.focus();
  }

  private _recipe: HTMLSelectElement;
  private _description: HTMLDivElement;
  private _backend: HTMLSelectElement;
  private _target: HTMLSelectElement;
  private _name: HTMLInputElement;
  private _gpus: HTMLInputElement;
  private _time: HTMLInputElement;
  private _extra: HTMLTextAreaElement;
}

/** Show the dialog; resolves to the launch request, or null when cancelled. */
export async function askLaunch(
  recipes: IRecipe[],
  targets: ITarget[],
  initial: Partial<ILaunchFields> = {},
  onProblem: (problem: string) => void
): Promise<{ request: ILaunchRequest; fields: ILaunchFields } | null> {
  let fields: Partial<ILaunchFields> = initial;
  for (;;) {
    const result = await showDialog<ILaunchFormValue>({
      title: 'Launch an AI session',
      body: new LaunchForm(recipes, targets, fields),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Launch' })],
      focusNodeSelector: 'select'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    if (result.value.request) {
      return { request: result.value.request, fields: result.value.fields };
    }
    onProblem(result.value.problem);
    fields = result.value.fields;
  }
}
