r"""The end-to-end frontier: does growing a ResNet reach end-to-end accuracy for at most half the training compute,
against the same net trained *for* each smaller budget? Whole CIFAR-10 (45,000 train, 5,000 validation, 10,000 test).

    .venv/bin/python benchmarks/frontier.py                # every stage; resumes, and reads finished runs back
    .venv/bin/python benchmarks/frontier.py --only select  # one stage: select, parity, e2e
    .venv/bin/python benchmarks/frontier.py --report       # no training: the JSON from the finished runs

Settings: params.yaml, section `frontier` (budget B, fractions, schedules, seeds, the shared run config). Stages:

1. select: the peak learning rate of ResNet-20 at B/2 (linear schedule), then linear against cosine at that rate,
   on the *validation* split with `select_seed`, never a measurement seed.
2. parity: bf16 autocast against fp32 at `parity_fraction` x B on every seed. bf16 is used for every other run only
   where the CPU or GPU computes it natively (`train.amp_bf16: auto`); the JSON records which ran.
3. e2e: the target network (ResNet-20) at every fraction of B with both schedules on the first seed; `seed_budgets`
   on every seed with
   the selected schedule; ResNet-8 and ResNet-14 at B. Seed-major, so that a slow spell hits every budget alike.

The frontier is the upper envelope of the e2e runs' mean test accuracy against their training FLOPs, linear between
its points. A growth recipe's `flops_ratio` is its FLOPs over the FLOPs at which the frontier first reaches the
recipe's mean test accuracy (likewise seconds). Target: `flops_ratio` <= 0.5 and `seconds_ratio` <= 0.6 with the
recipe's mean at least the e2e mean at B and at B/2 less one e2e standard deviation.

Each finished run leaves its metrics, history and configuration in benchmarks/results/frontier/<run>/ (committed:
small), checkpoints in benchmarks/work/frontier/ (ignored). A run whose summary exists is read back, not retrained;
one with a different configuration stops the benchmark with a one-line error. Results: results/frontier.json.
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import yaml

from incres.data import get_info, is_prepared
from incres.io import atomic_write
from incres.checkpoint import RunInUse
from incres.strategies import merge, resolve_config
from incres.train import run

from _common import RESULTS_DIR, busy_warning, write_results

ROOT = Path(__file__).resolve().parent.parent
FLOPS_TARGET, SECONDS_TARGET = 0.5, 0.6
STAGES = ('select', 'e2e', 'parity', 'growth')
SUMMARY_FILES = ('metrics.json', 'history.csv', 'config.yaml')


def frontier_params(path: Path) -> dict:
    "The `frontier` section of params.yaml; a one-line SystemExit if it is missing."
    params = yaml.safe_load(Path(path).read_text()) or {}
    if 'frontier' not in params: raise SystemExit(f'{path} has no `frontier` section: see benchmarks/frontier.py')
    return params['frontier']


def target_depth(fp: dict) -> int:
    "Depth of the network every recipe is compared on (params: frontier.common.model.depth, ResNet-20)."
    return fp['common']['model']['depth']


def epochs_at(fp: dict, fraction: float) -> int:
    "Whole epochs of the budget `fraction` x B."
    return max(1, round(fraction * fp['budget_epochs']))


def e2e_config(fp: dict, *, seed: int, epochs: int, depth: int | None = None, lr=None, schedule=None, bf16=None,
               data_root: Path = ROOT / 'data') -> dict:
    "The run config of an end-to-end run."
    optim = {k: v for k, v in {'lr': lr, 'schedule': schedule}.items() if v is not None}
    depth = target_depth(fp) if depth is None else depth
    train = {'seed': seed, 'epochs': epochs, **({} if bf16 is None else {'amp_bf16': bf16})}
    return merge(fp['common'], {'dataset': {'root': str(data_root)}, 'model': {'depth': depth}, 'optim': optim,
                                'train': train, 'strategy': {'name': 'e2e'}})


def _portable(config: dict) -> dict:
    "A run config without the machine's data path, as it is saved and compared."
    return merge(config, {'dataset': {'root': None}})


class Runs:
    "Train a run, or read it back: its summary in `summary_dir/<name>/`, its checkpoints in `work_dir/<name>/`."
    def __init__(self, summary_dir: Path, work_dir: Path, train: bool = True):
        self.summary_dir, self.work_dir, self.train = Path(summary_dir), Path(work_dir), train
        self.trained = []  # names trained by this invocation (the rest were read back)
        self.busy = set()  # names another process is training (several workers share the list)

    def done(self, name: str) -> bool: return (self.summary_dir / name / 'metrics.json').exists()

    def __call__(self, name: str, config: dict) -> dict | None:
        "The run's final metrics (with `config` and its `history`); None if not finished and training is off."
        out = self.summary_dir / name
        if self.done(name):
            saved = yaml.safe_load((out / 'config.yaml').read_text())
            if saved != _portable(config):
                raise SystemExit(f'{out} holds a run with another configuration than params.yaml now gives; '
                                 f'delete that folder to retrain it, or restore the settings')
        elif not self.train: return None
        else:
            print(f'training {name} ...', flush=True)
            try: run(config, self.work_dir / name)
            except RunInUse:
                self.busy.add(name)
                return None
            self.busy.discard(name)
            for file in SUMMARY_FILES[:2]: atomic_write(out / file, (self.work_dir / name / file).read_bytes())
            atomic_write(out / 'config.yaml', yaml.safe_dump(_portable(config), sort_keys=False))
            self.trained.append(name)
        metrics = json.loads((out / 'metrics.json').read_text())
        return {**metrics, 'history': (out / 'history.csv').read_text()}


def select(fp: dict, runs: Runs) -> dict | None:
    "The peak rate (linear schedule at B/2), then the schedule at that rate, by final validation accuracy."
    seed, epochs = fp['select_seed'], epochs_at(fp, 0.5)
    first, *others = fp['schedules']
    r = f'r{target_depth(fp)}'
    found = {lr: runs(f'select/{r}-{epochs}ep-{first}-lr{lr}', e2e_config(fp, seed=seed, epochs=epochs, lr=lr,
                                                                          schedule=first)) for lr in fp['select_lrs']}
    if any(m is None for m in found.values()): return None
    rows = [{'lr': lr, 'schedule': first, 'val_acc': m['val_acc'], 'val_loss': m['val_loss']}
            for lr, m in found.items()]
    best = max(rows, key=lambda r: (r['val_acc'], -r['val_loss']))  # 5,000 images: 0.02 points each; loss breaks ties
    for schedule in others:
        m = runs(f'select/{r}-{epochs}ep-{schedule}-lr{best["lr"]}',
                 e2e_config(fp, seed=seed, epochs=epochs, lr=best['lr'], schedule=schedule))
        if m is None: return None
        rows.append({'lr': best['lr'], 'schedule': schedule, 'val_acc': m['val_acc'], 'val_loss': m['val_loss']})
    chosen = max((r for r in rows if r['lr'] == best['lr']), key=lambda r: (r['val_acc'], -r['val_loss']))
    return {'seed': seed, 'epochs': epochs, 'runs': rows, 'lr': chosen['lr'], 'schedule': chosen['schedule']}


def e2e_plan(fp: dict, chosen: dict) -> list[tuple]:
    "`(name, config, row)` of every e2e run, in training order: what every seed needs first, then the rest."
    lr, main = chosen['lr'], chosen['schedule']
    def unit(seed, fraction, schedule=main, depth=target_depth(fp)):
        epochs = epochs_at(fp, fraction)
        row = {'depth': depth, 'epochs': epochs, 'fraction': fraction, 'schedule': schedule, 'seed': seed, 'lr': lr}
        name = f'e2e/r{depth}-{epochs}ep-{schedule}-seed{seed}'
        return name, e2e_config(fp, seed=seed, epochs=epochs, depth=depth, lr=lr, schedule=schedule), row
    first = fp['seeds'][0]
    plan = [unit(s, f) for s in fp['seeds'] for f in fp['seed_budgets']]
    plan += [unit(first, f) for f in fp['fractions'] if f not in fp['seed_budgets']]
    plan += [unit(first, 1.0, depth=d) for d in fp['shallow_depths']]
    plan += [unit(first, f, schedule=s) for s in fp['schedules'] if s != main for f in fp['fractions']]
    return plan


def parity_plan(fp: dict, chosen: dict) -> list[tuple]:
    "`(name, config, row)` of the fp32 arm of the parity check (its bf16 arm: the e2e runs at the same budget)."
    fraction, out = fp['parity_fraction'], []
    for seed in fp['seeds']:
        epochs = epochs_at(fp, fraction)
        config = e2e_config(fp, seed=seed, epochs=epochs, lr=chosen['lr'], schedule=chosen['schedule'], bf16=False)
        out.append((f'parity/r{target_depth(fp)}-{epochs}ep-{chosen["schedule"]}-seed{seed}-fp32', config,
                    {'depth': target_depth(fp), 'epochs': epochs, 'fraction': fraction, 'schedule': chosen['schedule'],
                     'seed': seed, 'lr': chosen['lr']}))
    return out


E2E_FIELDS = ('train_flops', 'train_seconds', 'test_acc', 'val_acc', 'amp_bf16', 'images_per_second')


def growth_config(fp: dict, recipe: dict, *, seed: int, chosen: dict, data_root: Path = ROOT / 'data') -> dict:
    "The run config of a growth recipe: the e2e runs' settings, peak rate and schedule, and the recipe's sections."
    return merge(fp['common'], {'dataset': {'root': str(data_root)}, 'model': recipe.get('model', {}),
                                'optim': {'lr': chosen['lr'], 'schedule': chosen['schedule']},
                                'train': {'seed': seed, 'epochs': fp['budget_epochs'], **recipe.get('train', {})},
                                'strategy': recipe['strategy']})


def select_recipes(fp: dict, runs: Runs, chosen: dict, data_root: Path) -> dict | None:
    """Every recipe once with the selection seed, ranked by its FLOPs ratio to that seed's *validation* frontier
    (e2e at `seed_budgets`); the best `measure_top` are measured on every seed."""
    seed = fp['select_seed']
    e2e = {f: runs(f'select/r{target_depth(fp)}-{epochs_at(fp, f)}ep-{chosen["schedule"]}-lr{chosen["lr"]}',
                   e2e_config(fp, seed=seed, epochs=epochs_at(fp, f), lr=chosen['lr'], schedule=chosen['schedule'],
                              data_root=data_root)) for f in fp['seed_budgets']}
    found = {name: runs(f'select/{name}', growth_config(fp, recipe, seed=seed, chosen=chosen, data_root=data_root))
             for name, recipe in fp['recipes'].items()}
    if any(m is None for m in [*e2e.values(), *found.values()]): return None
    frontier = envelope(list(e2e.values()), key='val_acc')
    rows = []
    for name, m in found.items():
        cost = cost_to_reach(frontier, m['val_acc'], key='val_acc')
        rows.append({'recipe': name, 'val_acc': m['val_acc'], 'final_depth': m['depth'],
                     'train_flops': m['train_flops'],
                     'flops_ratio': m['train_flops'] / cost['train_flops'] if cost else None,
                     'beyond_frontier': cost is None})
    ranked = sorted(rows, key=lambda r: (not r['beyond_frontier'], r['flops_ratio'] or 0.0))
    return {'seed': seed, 'e2e_val': [{'epochs': m['epochs'], 'val_acc': m['val_acc'], 'train_flops': m['train_flops']}
                                      for m in e2e.values()],
            'runs': rows, 'measured_on_every_seed': [r['recipe'] for r in ranked[:fp['measure_top']]]}


def growth_units(fp: dict, chosen: dict, order: list[tuple], data_root: Path) -> list[tuple]:
    "`(name, config, row)` of the growth runs `order` lists as `(seed, recipe)`."
    return [(f'growth/{r}-seed{s}', growth_config(fp, fp['recipes'][r], seed=s, chosen=chosen, data_root=data_root),
             {'recipe': r, 'seed': s}) for s, r in order]


def preregistered_plan(fp: dict, chosen: dict, data_root: Path) -> list[tuple]:
    "The recipes named before any growth run (`preregistered`) on every seed, seed-major: they need no selection."
    return growth_units(fp, chosen, [(s, r) for s in fp['seeds'] for r in fp.get('preregistered', [])], data_root)


def growth_plan(fp: dict, chosen: dict, recipes: dict, data_root: Path) -> tuple[list, list]:
    """`(top, rest)` of the selected growth runs: the best recipes on every seed (seed-major), then the others on the
    first seed; the preregistered recipes are measured on every seed already, so neither list repeats them."""
    prereg, first = fp.get('preregistered', []), fp['seeds'][0]
    top = [r for r in recipes['measured_on_every_seed'] if r not in prereg]
    rest = [r for r in fp['recipes'] if r not in top and r not in prereg]
    return (growth_units(fp, chosen, [(s, r) for s in fp['seeds'] for r in top], data_root),
            growth_units(fp, chosen, [(first, r) for r in rest], data_root))


def machine_key(metrics: dict) -> str | None:
    "The CPU (or GPU) and the kernels torch chose for it: seconds compare only between runs with the same key."
    m = metrics.get('machine') or {}
    if not m: return None
    return m.get('gpu') or f"{m.get('cpu')} ({m.get('torch_cpu_capability')}, {m.get('torch_threads')} thread(s))"


def record(row: dict, metrics: dict) -> dict:
    "A row of the JSON: the run's settings and its results, and the machine it ran on."
    return {**row, **{k: metrics.get(k) for k in E2E_FIELDS}, 'machine': machine_key(metrics)}


def mean_points(rows: list[dict], keys=('depth', 'epochs', 'schedule')) -> list[dict]:
    "Rows with equal `keys` averaged over their seeds: mean test accuracy, its sample sd, mean FLOPs and seconds."
    groups = {}
    for r in rows: groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        accs = [r['test_acc'] for r in rs]
        out.append({**dict(zip(keys, key)), 'seeds': len(rs), 'test_acc': statistics.fmean(accs),
                    'test_acc_std': statistics.stdev(accs) if len(accs) > 1 else None,
                    'train_flops': statistics.fmean(r['train_flops'] for r in rs),
                    'train_seconds': statistics.fmean(r['train_seconds'] for r in rs)})
    return out


def envelope(points: list[dict], key: str = 'test_acc') -> list[dict]:
    "The upper envelope of `key`: by FLOPs, each point kept only if it is more accurate than every cheaper one."
    out = []
    for p in sorted(points, key=lambda p: p['train_flops']):
        if not out or p[key] > out[-1][key]: out.append(p)
    return out


def cost_to_reach(frontier: list[dict], acc: float, key: str = 'test_acc') -> dict | None:
    """FLOPs and seconds at which the frontier, linear between its points, first reaches `acc`; None if it never
    does. At or below its cheapest point: that point's cost (`cheapest: True`), an upper bound on e2e's cost."""
    if acc <= frontier[0][key]:
        cheapest = frontier[0]
        return {'train_flops': cheapest['train_flops'], 'train_seconds': cheapest['train_seconds'], 'cheapest': True}
    for a, b in zip(frontier, frontier[1:]):
        if acc <= b[key]:
            t = (acc - a[key]) / (b[key] - a[key])
            return {k: a[k] + t * (b[k] - a[k]) for k in ('train_flops', 'train_seconds')} | {'cheapest': False}
    return None


def verdict(e2e: list[dict], growth: list[dict], fp: dict, main_schedule: str) -> dict:
    "The headline: the best growth recipe's ratios to the frontier, and whether it meets the target."
    points = mean_points(e2e)
    def point(fraction):
        epochs = epochs_at(fp, fraction)
        key = (target_depth(fp), epochs, main_schedule)
        return next((p for p in points if (p['depth'], p['epochs'], p['schedule']) == key), None)
    at_b, at_half = point(1.0), point(0.5)
    if not growth or at_b is None:
        why = 'not measured yet: ' + ('no growth recipe' if not growth else 'no e2e run at B')
        return {'recipe': None, 'flops_ratio': None, 'seconds_ratio': None, 'acc_delta': None, 'met': None,
                'why': why, 'summary': why}
    frontier = envelope(points)
    recipes = mean_points(growth, keys=('recipe', 'final_depth'))
    for r in recipes:
        cost = cost_to_reach(frontier, r['test_acc'])
        r['flops_ratio'] = r['train_flops'] / cost['train_flops'] if cost else None
        r['seconds_ratio'] = r['train_seconds'] / cost['train_seconds'] if cost else None
        r['beyond_frontier'] = cost is None
    most_seeds = max(r['seeds'] for r in recipes)
    ranked = [r for r in recipes if r['seeds'] == most_seeds]
    # beyond the frontier (more accurate than any e2e run) ranks first, then by FLOPs ratio
    best = min(ranked, key=lambda r: (not r['beyond_frontier'], r['flops_ratio'] or 0.0))
    floor = lambda p: p['test_acc'] - (p['test_acc_std'] or 0.0) if p else -math.inf
    accurate = best['test_acc'] >= floor(at_b) and best['test_acc'] >= floor(at_half)
    # seconds compare only on one machine: runs of another CPU (or of another instruction set, e.g. without native
    # bf16, where `amp_bf16: auto` trains in fp32) leave the seconds ratio unmeasured; FLOPs are exact everywhere
    machines = sorted({r.get('machine') or '?' for r in [*e2e, *(g for g in growth if g['recipe'] == best['recipe'])]})
    if len(machines) > 1: best['seconds_ratio'] = None
    cheap_flops = best['beyond_frontier'] or best['flops_ratio'] <= FLOPS_TARGET
    seconds_ratio = best['seconds_ratio']
    fast = best['beyond_frontier'] or (None if seconds_ratio is None else seconds_ratio <= SECONDS_TARGET)
    met = False if not (accurate and cheap_flops) or fast is False else (None if fast is None else True)
    out = {'recipe': best['recipe'], 'seeds': best['seeds'], 'test_acc': best['test_acc'],
           'flops_ratio': best['flops_ratio'], 'seconds_ratio': best['seconds_ratio'],
           'beyond_frontier': best['beyond_frontier'], 'acc_delta': best['test_acc'] - at_b['test_acc'],
           'accurate': accurate, 'e2e_at_b': at_b, 'e2e_at_half': at_half, 'met': met, 'machines': machines,
           'recipes': recipes}
    return out | {'summary': verdict_sentence(out)}


def verdict_sentence(v: dict) -> str:
    "The verdict in one sentence, with the criterion that failed: what the README, the report and the notebook say."
    if v['recipe'] is None: return v['why']
    cost = ('more accurate than every e2e run (beyond the frontier)' if v['beyond_frontier']
            else f"FLOPs ratio {v['flops_ratio']:.2f} (target <= {FLOPS_TARGET})")
    seconds = (f"seconds ratio {v['seconds_ratio']:.2f} (target <= {SECONDS_TARGET})" if v['seconds_ratio'] is not None
               else f"seconds not comparable (runs on {len(v['machines'])} machines)")
    head = {True: 'meets the target', False: 'does not meet the target', None: 'undetermined'}[v['met']]
    return (f"{v['recipe']} ({v['seeds']} seeds, test accuracy {v['test_acc']:.4f}, {v['acc_delta'] * 100:+.2f} points "
            f"against e2e at B; accuracy criterion {'met' if v['accurate'] else 'not met'}): {head}; {cost}; {seconds}")


def data_record(data_root: Path, name: str) -> dict | None:
    "The prepared data's source (the offline CIFAR-10 copy is a JPEG re-encoding: labelled as such)."
    if not (data_root / name / 'provenance.json').exists(): return None  # synthetic data, or not prepared
    source = json.loads((data_root / name / 'provenance.json').read_text()).get('source', {})
    return {'source': source.get('kind'), 'official': source.get('official'), 'note': source.get('note')}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', choices=STAGES, nargs='+', default=list(STAGES), help='stages to train (default: all)')
    p.add_argument('--report', action='store_true', help='train nothing: write the JSON from the finished runs')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--params', type=Path, default=ROOT / 'params.yaml')
    p.add_argument('--data-root', type=Path, default=ROOT / 'data')
    p.add_argument('--summary-dir', type=Path, default=RESULTS_DIR / 'frontier', help='finished runs (committed)')
    p.add_argument('--work-dir', type=Path, default=ROOT / 'benchmarks' / 'work' / 'frontier', help='checkpoints')
    p.add_argument('--results-dir', type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    fp = frontier_params(args.params)
    if not args.report and not is_prepared(fp['common']['dataset']['name'], args.data_root):
        p.error(f'{fp["common"]["dataset"]["name"]} is not prepared in {args.data_root}: run `make data` first')
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    for lr in fp['select_lrs']:  # every setting is checked before the first run starts
        resolve_config(e2e_config(fp, seed=fp['select_seed'], epochs=epochs_at(fp, 0.5), lr=lr,
                                  data_root=args.data_root))
    for name, recipe in fp['recipes'].items():
        try: resolve_config(growth_config(fp, recipe, seed=0, chosen={'lr': 0.1, 'schedule': 'linear'}))
        except ValueError as e: p.error(f'params.yaml frontier.recipes.{name}: {e}')
    if unknown := [r for r in fp.get('preregistered', []) if r not in fp['recipes']]:
        p.error(f'params.yaml frontier.preregistered: {", ".join(unknown)} not in frontier.recipes')
    if warning := busy_warning('wall'): print(warning)

    runs = Runs(args.summary_dir, args.work_dir, train=not args.report)
    while True:  # another worker may hold some runs: train the others, then wait for those
        code = measure(args, fp, runs)
        if not runs.busy: return code
        print(f'waiting for {len(runs.busy)} run(s) other workers are training ...', flush=True)
        runs.busy.clear()
        time.sleep(60)


def measure(args, fp: dict, runs: Runs) -> int:
    "One pass over every stage: train what is not finished (and not held by another worker), read back the rest."
    reading = Runs(args.summary_dir, args.work_dir, False)
    runner = lambda stage: runs if stage in args.only else reading
    chosen = select(fp, runner('select'))
    if chosen is None: return finish(args, fp, runs, None, [], [], [], None)
    print(f"selected: peak lr {chosen['lr']}, {chosen['schedule']} schedule "
          f"({len(chosen['runs'])} runs at {chosen['epochs']} epochs, seed {chosen['seed']}, validation)", flush=True)
    # priority order, so that an interrupted benchmark has the verdict's runs first: e2e on every seed, the bf16
    # check, the preregistered recipes on every seed, the rest of the e2e budgets, the growth selection and the best
    # recipes on every seed, then the other e2e runs (depths, schedule) and the other recipes
    e2e, core = e2e_plan(fp, chosen), len(fp['seeds']) * len(fp['seed_budgets'])
    budgets = core + len([f for f in fp['fractions'] if f not in fp['seed_budgets']])
    queue = [('e2e', e2e[:core]), ('parity', parity_plan(fp, chosen)),
             ('growth', preregistered_plan(fp, chosen, args.data_root)), ('e2e', e2e[core:budgets]),
             ('growth', 'top'), ('e2e', e2e[budgets:]), ('growth', 'rest')]
    rows = {'e2e': [], 'parity': [], 'growth': []}
    recipes = growth = None
    for stage, units in queue:
        if isinstance(units, str):
            recipes = recipes or select_recipes(fp, runner('select'), chosen, args.data_root)
            if recipes is None: continue  # its selection runs are not finished yet
            growth = growth or growth_plan(fp, chosen, recipes, args.data_root)
            units = growth[0] if units == 'top' else growth[1]
        for name, config, row in units:
            m = runner(stage)(name, config)
            if m is not None:
                rows[stage].append(record(row, m) | ({'final_depth': m['depth']} if stage == 'growth' else {}))
            if name in runs.trained: finish(args, fp, runs, chosen, *rows.values(), recipes)
    return finish(args, fp, runs, chosen, *rows.values(), recipes)


def parity_summary(e2e: list[dict], fp32: list[dict]) -> dict | None:
    "bf16 against fp32 at the same budget and seeds: mean and sd of each arm, and whether they are within noise."
    pairs = [(b, f) for f in fp32 for b in e2e if (b['depth'], b['epochs'], b['schedule'], b['seed'])
             == (f['depth'], f['epochs'], f['schedule'], f['seed'])]
    if not pairs: return None
    arm = lambda rs: {'test_acc': [r['test_acc'] for r in rs], 'amp_bf16': [r['amp_bf16'] for r in rs],
                      'images_per_second': statistics.fmean(r['images_per_second'] for r in rs),
                      'mean': statistics.fmean(r['test_acc'] for r in rs),
                      'std': statistics.stdev([r['test_acc'] for r in rs]) if len(rs) > 1 else None}
    bf16, fp = arm([b for b, _ in pairs]), arm([f for _, f in pairs])
    out = {'epochs': pairs[0][1]['epochs'], 'seeds': [f['seed'] for _, f in pairs], 'bf16': bf16, 'fp32': fp,
           'difference': bf16['mean'] - fp['mean'], 'speedup': bf16['images_per_second'] / fp['images_per_second']}
    # within noise: the means differ by less than two standard errors of the difference
    se = math.sqrt(((bf16['std'] or 0) ** 2 + (fp['std'] or 0) ** 2) / len(pairs)) if len(pairs) > 1 else None
    out['within_noise'] = None if se is None else abs(out['difference']) <= 2 * se
    out['standard_error'] = se
    return out


def finish(args, fp, runs, chosen, e2e, fp32, growth, recipes) -> int:
    "Write results/frontier.json from what has finished; print the frontier and the verdict."
    dataset = fp['common']['dataset']
    info = get_info(dataset['name'])
    results = {
        'dataset': dataset['name'], 'data': data_record(args.data_root, dataset['name']),
        'train_images': (dataset.get('subset') or info.num_train) - dataset['val_size'],
        'val_images': dataset['val_size'], 'test_images': dataset.get('test_subset') or info.num_test,
        'budget_epochs': fp['budget_epochs'], 'settings': fp,
        'targets': {'flops_ratio': FLOPS_TARGET, 'seconds_ratio': SECONDS_TARGET},
        'selection': chosen, 'recipe_selection': recipes, 'e2e': e2e, 'parity': parity_summary(e2e, fp32),
        'parity_fp32': fp32,
        'frontier': envelope(mean_points(e2e)) if e2e else [], 'growth': growth,
        'verdict': verdict(e2e, growth, fp, chosen['schedule']) if chosen else None,
        'runs_trained_by_this_command': runs.trained}
    path = write_results('frontier', results, args.results_dir)
    print(markdown(results), f'results: {path}', sep='\n', flush=True)
    return 0


def markdown(results: dict) -> str:
    "The results as the Markdown tables the README quotes: every e2e budget, every growth recipe, the verdict."
    def table(rows, cols):
        def fmt(v): return (f'{v:.4f}' if v < 10 else f'{v:.3g}') if isinstance(v, float) else str(v)
        return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
                         + ['| ' + ' | '.join(fmt(r.get(c)) for c in cols) + ' |' for r in rows])
    out = [table(sorted(mean_points(results['e2e']), key=lambda r: r['train_flops']),
                 ['depth', 'epochs', 'schedule', 'seeds', 'test_acc', 'test_acc_std', 'train_flops', 'train_seconds'])]
    if results['growth']:
        out.append(table(sorted(mean_points(results['growth'], keys=('recipe', 'final_depth')),
                                key=lambda r: r['train_flops']),
                         ['recipe', 'final_depth', 'seeds', 'test_acc', 'test_acc_std', 'train_flops',
                          'train_seconds']))
    if (v := results['verdict']) is not None: out.append(f"verdict: {v.get('summary') or verdict_sentence(v)}")
    return '\n\n'.join(out)


if __name__ == '__main__':
    sys.exit(main())
