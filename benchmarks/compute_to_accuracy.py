r"""Compute to accuracy: does a growth schedule reach the end-to-end network's final test accuracy for at most half its
training FLOPs and 0.6x its wall-clock? Every strategy of params.yaml, same data, seeds and evaluation, one process.

    .venv/bin/python benchmarks/compute_to_accuracy.py              # quick regime, seeds 0 1 2 (~1 h on 2 cores)
    .venv/bin/python benchmarks/compute_to_accuracy.py --regime full-data --seeds 0 --strategies e2e zero selected \
        --selected zero-x2-7-newfirst                                       # the whole training set (~35 min)

Two steps, so that no schedule is chosen on the test set:

1. Selection. Every candidate growth schedule of `CANDIDATES` (when to grow, how many blocks at once, which init,
   the learning rate at growth, freezing) trains once with `--select-seed` (not one of the measurement seeds). The
   schedule with the best final *validation* accuracy (ties: lower validation loss; the split is carved from the
   training set, `dataset.val_size`) among those whose measured training FLOPs are at most `--budget` x end-to-end's
   becomes `selected`, if its final network is end-to-end's (Net2Net and DILS insert plain layers and end shallower;
   they are shown, not chosen). `--selected NAME` skips this step.
2. Measurement. For each seed, every strategy (params.yaml's `strategies` plus `selected`) trains in turn, seed-major,
   so that a slow spell of the machine hits all strategies alike. Against the same seed's end-to-end run, each run
   gets: its final test accuracy; its total training FLOPs and seconds as ratios; and the ratios at the first epoch
   whose test accuracy reaches end-to-end's final test accuracy minus `--tolerance` (time to accuracy, like
   DAWNBench: the test set measures when the target is reached, it chooses nothing). The target counts as reached
   only if every seed reaches it; a looser reading (mean final accuracy over seeds against end-to-end's mean, whole
   budgets) is printed and recorded too (`best_on_mean`).

The configuration is params.yaml's `quick` profile (ResNet-20, CIFAR-10 subset of 5,000 with 500 for validation,
2,000 test images, 9 epochs, cosine lr 0.1) with the regime's dataset overrides; seconds are the trainer's
`train_seconds` (training steps, growth and feature caching; not evaluation). Runs live in `--work-dir` and resume
from their checkpoints, so an interrupted benchmark continues where it stopped; finished runs are not re-trained.
Prints the selection and a table (mean and spread over seeds); the last line is the FLOPs and seconds ratios to
end-to-end accuracy of the cheapest growth strategy that ends in the end-to-end network and reaches the target in
every seed. Results: benchmarks/results/compute_to_accuracy[-<regime>].json.
"""
import argparse
import copy
from pathlib import Path

import pandas as pd
import torch

from incres.data import is_prepared
from incres.pipeline import compute_to_accuracy, experiment_runs, load_params
from incres.strategies import merge, resolve_config
from incres.train import run

from _common import RESULTS_DIR, busy_warning, write_results

ROOT = Path(__file__).resolve().parent.parent
FLOPS_TARGET, SECONDS_TARGET = 0.5, 0.6

# Growth schedules tried on the validation split: name -> (params.yaml strategy section, overrides of the run config).
# ResNet-20 has stages of 3 blocks; growth starts from one block a stage (ResNet-8, ~0.30x the FLOPs of ResNet-20 per
# step; ResNet-14 ~0.65x), so e.g. 6 epochs at depth 8, 2 at 14 and 1 at 20 cost about 0.46x of 9 epochs at 20.
CANDIDATES = {
    'zero-6-8': ('zero', {'strategy': {'grow_epochs': [6, 8]}}),
    'zero-5-8': ('zero', {'strategy': {'grow_epochs': [5, 8]}}),
    'zero-7-8': ('zero', {'strategy': {'grow_epochs': [7, 8]}}),
    'zero-x2-7': ('zero', {'strategy': {'grow_epochs': [7], 'blocks_per_growth': 2}}),
    'zero-10ep-7-9': ('zero', {'strategy': {'grow_epochs': [7, 9]}, 'train': {'epochs': 10}}),
    # learning rate at growth: re-warm from zero over an epoch; a 3x learning rate for the new blocks
    'zero-6-8-rewarm': ('zero', {'strategy': {'grow_epochs': [6, 8], 'lr_at_growth': 'rewarm'}}),
    'zero-6-8-newlr3': ('zero', {'strategy': {'grow_epochs': [6, 8], 'new_lr_scale': 3.0}}),
    # freezing: train only the new blocks (and the head) for the first epoch after growth, then everything
    'zero-x2-7-newfirst': ('zero', {'strategy': {'grow_epochs': [7], 'blocks_per_growth': 2,
                                                 'trainable': 'new_then_all', 'new_only_epochs': 1}}),
    'random-6-8': ('random', {'strategy': {'grow_epochs': [6, 8]}}),
    'net2net-6-8': ('net2net', {'strategy': {'grow_epochs': [6, 8]}}),
    'dils-6-8': ('dils', {'strategy': {'grow_epochs': [6, 8]}}),
}
SMOKE_CANDIDATES = {'zero-4': ('zero', {'strategy': {'grow_epochs': [4]}}),
                    'zero-5': ('zero', {'strategy': {'grow_epochs': [5]}})}

# A regime: the params profile it starts from (`None`: params.yaml's `quick`), the dataset, overrides of the
# profile's `common` section, and the candidate schedules.
REGIMES = {
    # exactly the pipeline's quick runs: seed 0 reproduces runs/cifar10/<strategy> bit for bit on a CPU
    'quick': {'profile': None, 'dataset': 'cifar10', 'common': {}, 'candidates': CANDIDATES},
    'full-data': {'profile': None, 'dataset': 'cifar10', 'candidates': CANDIDATES,
                  'common': {'dataset': {'subset': None, 'val_size': 5000, 'test_subset': None,
                                         'eval_batch_size': 1000}}},
    # seconds on synthetic data with incres.pipeline.SMOKE_PARAMS: for the test suite, not a measurement
    'smoke': {'profile': 'smoke', 'dataset': 'synthetic', 'common': {}, 'candidates': SMOKE_CANDIDATES},
}


def load_regime_params(regime: str, path: Path) -> dict:
    "The pipeline parameters a regime starts from: params.yaml with its `quick` profile, or SMOKE_PARAMS."
    params = copy.deepcopy(load_params(None if REGIMES[regime]['profile'] == 'smoke' else path))
    params['profile'] = REGIMES[regime]['profile'] or 'quick'
    return params


def run_config(params: dict, regime: str, strategy: str, seed: int, overrides: dict, data_root=ROOT / 'data') -> dict:
    "The run configuration of the params' strategy section `strategy` in `regime`, with `overrides` on top."
    params = copy.deepcopy(params)
    profile = params['profiles'][params['profile']]
    profile['seeds'], profile['variants'] = [seed], {}
    profile['common'] = merge(profile['common'], REGIMES[regime]['common'])
    (r,) = experiment_runs(params, REGIMES[regime]['dataset'], strategy, data_root=data_root)
    return merge(r['config'], merge(overrides, {'train': {'save_model': False, 'progress': False}}))


def train(config: dict, run_dir: Path) -> tuple[dict, pd.DataFrame]:
    "Train (or resume, or just read back) one run; its final metrics and per-epoch history."
    metrics = run(config, run_dir)
    history = pd.read_csv(run_dir / 'history.csv')
    return metrics, history


def flops_ratio(metrics: dict, reference: dict) -> float: return metrics['train_flops'] / reference['train_flops']


def same_network(metrics: dict, reference: dict) -> bool:
    ("Whether a run ends in the reference's architecture "
     "(Net2Net and DILS insert plain layers: a shallower final network).")
    return (metrics['depth'], metrics['params'], metrics['stage_depths']) == (reference['depth'], reference['params'],
                                                                          reference['stage_depths'])


def select(params, args, work_dir: Path) -> tuple[str, list]:
    "Train every candidate with the selection seed; the name of the best within budget by final validation accuracy."
    reference, _ = train(run_config(params, args.regime, 'e2e', args.select_seed, {}), work_dir / 'select' / 'e2e')
    rows = [{'schedule': 'e2e', 'val_acc': reference['val_acc'], 'val_loss': reference['val_loss'], 'flops_ratio': 1.0,
             'seconds_ratio': 1.0, 'depth': reference['depth'], 'params': reference['params'], 'same_network': True}]
    for name, (strategy, overrides) in REGIMES[args.regime]['candidates'].items():
        m, _ = train(run_config(params, args.regime, strategy, args.select_seed, overrides), work_dir / 'select' / name)
        rows.append({'schedule': name, 'val_acc': m['val_acc'], 'val_loss': m['val_loss'],
                     'flops_ratio': flops_ratio(m, reference),
                     'seconds_ratio': m['train_seconds'] / reference['train_seconds'], 'depth': m['depth'],
                     'params': m['params'], 'same_network': same_network(m, reference)})
        print(f"  {name:>18}: val acc {m['val_acc']:.3f}  val loss {m['val_loss']:.3f}  "
              f"FLOPs {rows[-1]['flops_ratio']:.2f}x  seconds {rows[-1]['seconds_ratio']:.2f}x  "
              f"(e2e val acc {reference['val_acc']:.3f})", flush=True)
    eligible = [r for r in rows[1:] if r['flops_ratio'] <= args.budget and r['same_network']]
    if not eligible:
        raise SystemExit(f'no candidate schedule ends in the end-to-end network for at most {args.budget}x its FLOPs; '
                         f'add one to CANDIDATES')
    # 500 validation images resolve 0.2 points, so accuracies tie often; the validation loss breaks ties
    return max(eligible, key=lambda r: (r['val_acc'], -r['val_loss']))['schedule'], rows


def summarise(per_seed: pd.DataFrame) -> pd.DataFrame:
    ("Per strategy over seeds: mean ratios (a ratio to accuracy averages the seeds that reach it), sample sd, "
     "seeds reaching.")
    numeric = ['final_test_acc', 'flops_ratio', 'seconds_ratio', 'total_flops_ratio', 'total_seconds_ratio']
    g = per_seed.groupby('strategy', sort=False)
    table = g[numeric].mean()
    for col in ('final_test_acc', 'flops_ratio', 'total_flops_ratio'):
        table[f'{col}_std'] = g[col].std()
    table['seeds'] = g.size()
    table['reached'] = g.reached.sum()
    table['final_depth'] = g.depth.first()
    table['same_network'] = g.same_network.all()
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--regime', choices=sorted(REGIMES), default='quick',
                   help='dataset sizes (default: quick, the pipeline\'s)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='measurement seeds (default: 0 1 2)')
    p.add_argument('--strategies', nargs='+', default=None,
                   help="strategies to measure: params.yaml keys and/or 'selected' "
                        "(default: params.yaml's list plus selected)")
    p.add_argument('--select-seed', type=int, default=100, help='seed of the selection runs (default: 100)')
    p.add_argument('--selected', default=None,
                   help='skip the selection and use this candidate schedule (a name in CANDIDATES)')
    p.add_argument('--budget', type=float, default=FLOPS_TARGET,
                   help='FLOPs budget of the selection, x end-to-end (default: 0.5)')
    p.add_argument('--tolerance', type=float, default=None,
                   help="accuracy tolerance (default: params.yaml's figures.tolerance)")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    p.add_argument('--work-dir', type=Path, default=None,
                   help='run directories (default: benchmarks/work/compute_to_accuracy-<regime>)')
    p.add_argument('--params', type=Path, default=ROOT / 'params.yaml')
    p.add_argument('--results-dir', type=Path, default=RESULTS_DIR,
                   help='where the JSON goes (default: benchmarks/results)')
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    params = load_regime_params(args.regime, args.params)
    candidates = REGIMES[args.regime]['candidates']
    if args.selected is not None and args.selected not in candidates:
        p.error(f'--selected {args.selected!r} is not a candidate of regime {args.regime!r}: {sorted(candidates)}')
    strategies = args.strategies or [*params['strategies'], 'selected']
    unknown = [s for s in strategies if s not in params['strategy'] and s != 'selected']
    if unknown:
        p.error(f"unknown strategies {unknown}; params.yaml's strategy section has {sorted(params['strategy'])}")
    if 'e2e' not in strategies: p.error("the strategies must include e2e, the reference")
    dataset = REGIMES[args.regime]['dataset']
    if not is_prepared(dataset, ROOT / 'data'):
        p.error(f'{dataset} is not prepared in {ROOT / "data"}: '
                f'run `make data` (or `incres data prepare {dataset}`) first')
    tolerance = (args.tolerance if args.tolerance is not None
                 else params['profiles'][params['profile']]['figures']['tolerance'])
    work_dir = args.work_dir or ROOT / 'benchmarks' / 'work' / f'compute_to_accuracy-{args.regime}'
    # every configuration is checked before the first run starts
    for name, (strategy, overrides) in candidates.items():
        resolve_config(run_config(params, args.regime, strategy, args.select_seed, overrides))
    for s in strategies:
        if s != 'selected': resolve_config(run_config(params, args.regime, s, args.seeds[0], {}))
    if warning := busy_warning('wall'): print(warning)

    selection = None
    if 'selected' in strategies and args.selected is None:
        print(f'selection (seed {args.select_seed}, validation split, budget {args.budget}x FLOPs):', flush=True)
        args.selected, selection = select(params, args, work_dir)
        print(f'  selected: {args.selected}', flush=True)
    rows, curves = [], []
    for seed in args.seeds:
        results = {}
        for s in strategies:
            if s == 'selected': (strategy, overrides), label = candidates[args.selected], f'selected ({args.selected})'
            else: strategy, overrides, label = s, {}, s
            run_dir = work_dir / f'seed{seed}' / (f'selected-{args.selected}' if s == 'selected' else s)
            metrics, history = train(run_config(params, args.regime, strategy, seed, overrides), run_dir)
            results[label] = metrics, history
            print(f"seed {seed} {label:>24}: test acc {metrics['test_acc']:.4f}  {metrics['train_flops']:.3e} FLOPs  "
                  f"{metrics['train_seconds']:.0f} s", flush=True)
            curves += [{'strategy': label, 'seed': seed, **r} for r in history[
                ['epoch', 'phase', 'depth', 'train_flops', 'train_seconds', 'val_acc', 'test_acc']].to_dict('records')]
        run_name = f'seed{seed}'
        metrics = pd.DataFrame([{'strategy_key': k, 'run': run_name, **m} for k, (m, _) in results.items()])
        history = pd.concat([h.assign(strategy_key=k, run=run_name) for k, (_, h) in results.items()],
                            ignore_index=True)
        table = compute_to_accuracy(metrics, history, reference='e2e', tolerance=tolerance).reset_index()
        table['seed'], table['target_acc'] = seed, table.attrs['target_acc']
        table['depth'] = table.strategy.map({k: m['depth'] for k, (m, _) in results.items()})
        table['same_network'] = table.strategy.map({k: same_network(m, results['e2e'][0])
                                                    for k, (m, _) in results.items()})
        table['reached'] = table.reached.astype(bool)
        rows.append(table)
    per_seed = pd.concat(rows, ignore_index=True)
    summary = summarise(per_seed)

    growth = summary.drop(index='e2e')
    reached_all = growth[(growth.reached == growth.seeds) & growth.same_network]
    # the looser reading: the mean over seeds of the final accuracy against end-to-end's mean, total budgets
    on_mean = growth[growth.same_network & (growth.final_test_acc >= summary.loc['e2e', 'final_test_acc'] - tolerance)]
    best_on_mean = on_mean.total_flops_ratio.idxmin() if not on_mean.empty else None
    best = reached_all.flops_ratio.idxmin() if not reached_all.empty else None
    meets = (best is not None and reached_all.loc[best, 'flops_ratio'] <= FLOPS_TARGET
             and reached_all.loc[best, 'seconds_ratio'] <= SECONDS_TARGET)
    name = 'compute_to_accuracy' if args.regime == 'quick' else f'compute_to_accuracy-{args.regime}'
    path = write_results(name, results_dir=args.results_dir, results={
        'regime': args.regime, 'seeds': args.seeds, 'select_seed': args.select_seed, 'budget': args.budget,
        'tolerance': tolerance, 'targets': {'flops_ratio': FLOPS_TARGET, 'seconds_ratio': SECONDS_TARGET},
        'candidates': {k: {'strategy': s, 'overrides': o} for k, (s, o) in candidates.items()},
        'selection': selection, 'selected': args.selected,
        'config': run_config(params, args.regime, 'e2e', args.seeds[0], {}),
        'per_seed': per_seed.to_dict('records'), 'summary': summary.reset_index().to_dict('records'),
        'curves': curves, 'best': best, 'meets_target': bool(meets), 'best_on_mean': best_on_mean})

    pd.set_option('display.width', 200)
    print(summary[['seeds', 'final_depth', 'same_network', 'final_test_acc', 'final_test_acc_std', 'reached',
                   'flops_ratio', 'seconds_ratio', 'total_flops_ratio', 'total_seconds_ratio']].round(3).to_string())
    print(f'results: {path}')
    if best_on_mean is not None:
        b = on_mean.loc[best_on_mean]
        print(f"on the mean over seeds: {best_on_mean} ends at {b.final_test_acc:.4f} "
              f"(e2e {summary.loc['e2e', 'final_test_acc']:.4f}) for {b.total_flops_ratio:.3f}x the FLOPs "
              f"and {b.total_seconds_ratio:.3f}x the seconds of e2e")
    if best is None:
        print(f'key ratio: no growth strategy ending in the e2e network reached e2e accuracy - {tolerance} '
              f'in every seed (target: <= {FLOPS_TARGET}x FLOPs, <= {SECONDS_TARGET}x seconds): not met')
    else:
        b = reached_all.loc[best]
        print(f"key ratio: {best} reaches e2e accuracy - {tolerance} at {b.flops_ratio:.3f}x FLOPs, "
              f"{b.seconds_ratio:.3f}x seconds (mean of {int(b.seeds)} seeds; "
              f"target <= {FLOPS_TARGET}x, <= {SECONDS_TARGET}x: {'met' if meets else 'not met'})")


if __name__ == '__main__':
    main()
