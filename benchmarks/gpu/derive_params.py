"""The GPU pipeline's parameters (benchmarks/gpu/dvc.yaml, `make repro-gpu`): params.yaml with a profile selected
(`gpu`) and
only that profile's grid, written to a file of its own, so that params.yaml itself is never modified.

    # what the pipeline's first stage runs
    python benchmarks/gpu/derive_params.py params.yaml benchmarks/gpu/params.resolved.yaml
    # print it, and the time at that rate
    python benchmarks/gpu/derive_params.py params.yaml - --images-per-second 31000

The profile's `grid` names the datasets and strategies to run (the main pipeline runs every one in params.yaml); its
`strategy` section adds strategies of its own to params.yaml's `strategy:` (a name in both is an error). Every run
configuration is resolved (`incres.strategies.resolve_config`, `plan_phases`) before the file is written, so a bad
profile fails here, in seconds, before any GPU time is spent. Printed to stderr: an estimate of the training time at
a ResNet-56-equivalent rate of `--images-per-second` (FLOPs of every phase's network against the final network's;
it assumes FLOP/s do not depend on the depth, which flatters the small networks of a growth run)."""
import argparse
import sys
from pathlib import Path

import yaml

from incres.io import atomic_write
from incres.pipeline import check_params, experiment_runs
from incres.strategies import plan_phases, resolve_config

PROFILE_ONLY = ('grid', 'strategy')  # keys of a profile that only this script reads


def derive(params: dict, profile: str = 'gpu') -> dict:
    "The parameters of `profile`'s grid alone, with `profile` selected: what the notebooks read as params.yaml."
    if profile not in (params.get('profiles') or {}):
        raise ValueError(f"params: no profile {profile!r}; have {sorted(params.get('profiles') or {})}")
    prof = params['profiles'][profile]
    grid, extra = prof.get('grid') or {}, prof.get('strategy') or {}
    clash = sorted(set(extra) & set(params['strategy']))
    if clash: raise ValueError(f"profiles.{profile}.strategy redefines {clash}, already under `strategy:`; rename them")
    strategy = {**params['strategy'], **extra}
    strategies = list(grid.get('strategies', params['strategies']))
    unknown = [s for s in strategies if s not in strategy]
    if unknown:
        raise ValueError(f"profiles.{profile}.grid.strategies names {unknown}, defined neither under `strategy:` nor "
                         f"under profiles.{profile}.strategy")
    out = {'profile': profile, 'datasets': list(grid.get('datasets', params['datasets'])), 'strategies': strategies,
           'strategy': {s: strategy[s] for s in strategies},
           'profiles': {profile: {k: v for k, v in prof.items() if k not in PROFILE_ONLY}}}
    check_params(out)
    return out


def run_configs(params: dict, data_root='data') -> list:
    "Every run of the grid of (derived) `params`, resolved: `[{'dataset', 'strategy', 'name', 'config', 'plans'}]`."
    out = []
    for dataset in params['datasets']:
        for strategy in params['strategies']:
            for r in experiment_runs(params, dataset, strategy, data_root):
                cfg = resolve_config(r['config'])
                out.append({'dataset': dataset, 'strategy': strategy, 'name': r['name'], 'config': cfg,
                            'plans': plan_phases(cfg)})
    return out


def _train_images(ds: dict) -> tuple:
    "(training images, evaluated images per epoch) of a run's dataset section, from the dataset's sizes."
    from incres.data import get_info
    info = get_info(ds['name'])
    pool = ds['subset'] or info.num_train
    test = ds['test_subset'] or info.num_test
    return pool - ds['val_size'], ds['val_size'] + test


def _image_flops(cfg: dict, plan) -> int:
    "Training FLOPs per image of the network `plan` trains (forward and backward, as the trainer counts them)."
    import torch
    from incres.compute import train_step_flops
    from incres.data import get_info
    from incres.network import Network, TrainStep, make_net
    info = get_info(cfg['dataset']['name'])
    net = make_net(cfg['model'], plan.stage_depths, plan.widths, info.channels, info.num_classes)
    x, y = torch.zeros(2, *info.shape), torch.zeros(2, dtype=torch.long)
    return train_step_flops(TrainStep(Network(net, None, None)), x, y) // 2


def estimate(runs: list, images_per_second: float) -> list:
    """Per run: epochs of its final network that cost its FLOPs (training, plus evaluation at a third of a training
    image), and the seconds they take at `images_per_second` of the final network."""
    out, cache = [], {}
    for r in runs:
        cfg, plans = r['config'], r['plans']
        train, evaluated = _train_images(cfg['dataset'])
        flops = {}
        for p in plans:
            key = (str(cfg['model']), tuple(p.stage_depths), tuple(p.widths))
            if key not in cache: cache[key] = _image_flops(cfg, p)
            flops[p.index] = cache[key]
        final = flops[plans[-1].index]
        epochs = sum(p.epochs * flops[p.index] / final for p in plans)
        eval_epochs = sum(p.epochs * flops[p.index] / final for p in plans) * evaluated / (3 * train)
        images = (epochs + eval_epochs) * train
        out.append({'dataset': r['dataset'], 'strategy': r['strategy'], 'run': r['name'],
                    'final_network_epochs': epochs, 'flops_ratio': epochs / plans[-1].end_epoch,
                    'seconds': images / images_per_second})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('params', help='params.yaml')
    p.add_argument('out', help="the derived parameters ('-': standard output)")
    p.add_argument('--profile', default='gpu', help='the profile to select')
    p.add_argument('--images-per-second', type=float, default=25_000,
                   help="training images/s of the final network, for the time estimate (the profile's assumption)")
    args = p.parse_args(argv)
    params = derive(yaml.safe_load(Path(args.params).read_text()), args.profile)
    runs = run_configs(params)
    header = f'# derived from {args.params} by benchmarks/gpu/derive_params.py: do not edit\n'
    text = header + yaml.safe_dump(params, sort_keys=False)
    if args.out == '-': print(text, end='')
    else: atomic_write(Path(args.out), text)
    rows = estimate(runs, args.images_per_second)
    for r in rows:
        print(f"{r['dataset']}/{r['strategy']}/{r['run']}: {r['flops_ratio']:.2f}x the FLOPs of training its final "
              f"network throughout, ~{r['seconds']:.0f} s", file=sys.stderr)
    print(f"{len(rows)} runs, ~{sum(r['seconds'] for r in rows) / 60:.1f} min of training and evaluation at "
          f"{args.images_per_second:,.0f} images/s of the final network (fixed costs not included)", file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
