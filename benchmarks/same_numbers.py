"""Does a change to the engine move any number? Runs nine tiny configurations (every strategy, growth by each kind of
operator, a widening, the frozen-prefix cache) on the synthetic data with whatever `incres` Python imports, and writes
everything that does not depend on the clock: metrics, history, every step's loss, growth events and a digest of the
final weights. Run it once with the old code and once with the new, on one machine (CPU results are bit-identical on
one machine, not across machines), then compare:

    PYTHONPATH=/path/to/old/checkout python benchmarks/same_numbers.py /tmp/old.json
    python benchmarks/same_numbers.py /tmp/new.json
    python benchmarks/same_numbers.py --compare /tmp/old.json /tmp/new.json

About 30 seconds on one core."""
import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

TINY = {'dataset': {'name': 'synthetic', 'batch_size': 64, 'val_size': 64}, 'model': {'depth': 14, 'width': 4},
        'train': {'epochs': 6, 'progress': False}, 'optim': {'lr': 0.05}}
CASES = {
    'e2e': {},
    'incremental-zero': {'strategy': {'name': 'incremental'}},
    'incremental-random-new-lr': {'strategy': {'name': 'incremental', 'init': 'random', 'trainable': 'new_then_all',
                                               'new_lr_scale': 3.0}},
    'net2net': {'strategy': {'name': 'net2net'}},
    'dils-approx': {'strategy': {'name': 'dils', 'init': 'dils_approx'}},
    'greedy-cached': {'strategy': {'name': 'greedy'}, 'dataset': {'augment': False}},
    'dgl': {'strategy': {'name': 'dgl'}},
    'widen-net2net': {'strategy': {'name': 'custom', 'phases': [{'epochs': 2, 'widths': [2, 4, 8]},
                                                                {'epochs': 4, 'widths': [4, 8, 16]}]}},
    'incremental-new-cached-cosine': {'strategy': {'name': 'incremental', 'trainable': 'new', 'grow_epochs': [2]},
                                      'dataset': {'augment': False}, 'optim': {'schedule': 'cosine'}},
}


def clock_free(run_dir: Path, metrics: dict) -> dict:
    "Everything a run wrote that does not depend on the clock."
    import pandas as pd
    history = pd.read_csv(run_dir/'history.csv')
    events = [json.loads(line) for line in (run_dir/'events.jsonl').read_text().splitlines()]
    weights = torch.load(run_dir/'model.pt', weights_only=True)['state_dict']
    return {'metrics': {k: v for k, v in metrics.items() if 'second' not in k and k != 'machine'},
            'history': history[[c for c in history.columns if 'seconds' not in c]].to_csv(index=False),
            'steps': (run_dir/'steps.csv').read_text(),
            'events': [{k: v for k, v in e.items() if 'seconds' not in k} for e in events],
            'event_keys': [list(e) for e in events],
            'weights': hashlib.sha256(b''.join(t.cpu().numpy().tobytes() for t in weights.values())).hexdigest()}


def run_all(out: Path) -> None:
    import incres
    from incres.strategies import merge
    from incres.train import run
    torch.set_num_threads(1)
    results = {'incres': str(Path(incres.__file__).parent), 'torch': torch.__version__, 'runs': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in CASES.items():
            metrics = run(merge(TINY, change), Path(tmp)/name)
            results['runs'][name] = clock_free(Path(tmp)/name, metrics)
            print(f"{name}: test_acc {metrics['test_acc']:.4f}, {metrics['train_flops']:.4e} FLOPs", flush=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + '\n')
    print(f'written to {out} (incres from {results["incres"]})')


def compare(a: Path, b: Path) -> int:
    old, new = (json.loads(p.read_text())['runs'] for p in (a, b))
    differ = [f'{name}.{part}' for name in sorted(set(old) | set(new)) for part in ('metrics', 'history', 'steps',
              'events', 'event_keys', 'weights') if old.get(name, {}).get(part) != new.get(name, {}).get(part)]
    print('identical: every run, every number' if not differ else 'differ: ' + ', '.join(differ))
    return 1 if differ else 0


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('out', nargs='?', type=Path, help='where to write the results (JSON)')
    p.add_argument('--compare', nargs=2, type=Path, metavar=('OLD', 'NEW'), help='compare two results files')
    args = p.parse_args()
    if args.compare: sys.exit(compare(*args.compare))
    if args.out is None: p.error('give OUT, or --compare OLD NEW')
    run_all(args.out)
