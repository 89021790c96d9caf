"""No engine overhead: images/second of the incres training loop (`incres.train.Trainer`) against a bare PyTorch loop
on the same model, batch size and in-memory data, measured in one process, alternating bare and incres runs.

    .venv/bin/python benchmarks/engine_overhead.py                        # ResNet-20, batch 128, 6 rounds of 25 steps
    .venv/bin/python benchmarks/engine_overhead.py --steps 20 --rounds 2 --threads 1

Both loops get their batches from `incres.data.TensorBatches` (random crop, flip and normalisation on the same images
in the same order), build `incres.resnet.resnet(depth)` in channels-last memory and use SGD (lr 0.1, momentum 0.9,
Nesterov, weight decay 1e-4) with cross-entropy, so only the loop differs. The incres number is the trainer's own
`steps × batch size / train_seconds` (its timer covers the training steps, growth and feature caching, not
evaluation and not the one-off FLOP count of a new architecture); the bare loop is timed the same way with the same
`incres.compute.Stopwatch`. The FLOP count and the trainer's other fixed costs (setup, logging, files) are timed
separately and reported. `--clock cpu` times CPU seconds of this process instead of wall seconds (for a machine
shared with other jobs; use it with `--threads 1`). Prints a table, then as the last line the ratio of the medians
incres / bare; the target is at least 0.95. Results also go to benchmarks/results/engine_overhead.json.
"""
import argparse
import math
import statistics
import tempfile

import torch
import torch.nn.functional as F

from incres.compute import Stopwatch, train_step_flops
from incres.data import DATASETS, is_prepared, make_loaders
from incres.resnet import resnet
from incres.train import Trainer

from _common import CLOCK_HELP, CLOCKS, busy_warning, clock, load_average, now, write_results

TARGET = 0.95


class TimedFlopCounter:
    "A `flop_counter` for `incres.train.Trainer` that adds up the seconds `train_step_flops` takes."
    def __init__(self): self.seconds, self.calls = 0.0, 0

    def __call__(self, *args, **kwargs) -> int:
        start = now()
        try: return train_step_flops(*args, **kwargs)
        finally: self.seconds += now() - start; self.calls += 1


def measurement_plan(dataset: str, batch_size: int, steps: int) -> dict:
    ("Subset and epochs that give (at least) `steps` full batches: CIFAR-10 takes one epoch, "
     "the 512 synthetic images several.")
    if dataset == 'synthetic':
        n_train = DATASETS['synthetic'].num_train  # 512 images; 'subset' cannot exceed them
        steps_per_epoch = n_train // batch_size
        if steps_per_epoch == 0: raise SystemExit(f'--batch-size {batch_size} is larger than the 512 synthetic images')
        return {'subset': None, 'epochs': math.ceil(steps / steps_per_epoch), 'steps_per_epoch': steps_per_epoch}
    return {'subset': steps * batch_size, 'epochs': 1, 'steps_per_epoch': steps}


def incres_config(args, plan: dict) -> dict:
    return {'dataset': {'name': args.dataset, 'root': args.root, 'subset': plan['subset'], 'val_size': 0,
                        'batch_size': args.batch_size},
            'model': {'depth': args.depth}, 'strategy': {'name': 'e2e'},
            'optim': {'lr': 0.1, 'momentum': 0.9, 'nesterov': True, 'weight_decay': 1e-4},
            'train': {'epochs': plan['epochs'], 'device': args.device, 'progress': False, 'checkpoint': False,
                      'save_model': False, 'eval_every': 10**9}}


def bare_loop(loader, epochs: int, depth: int, device: torch.device) -> dict:
    "What a PyTorch user would write: forward, loss, backward, step, zero_grad; nothing read back."
    torch.manual_seed(0)
    net = resnet(depth, num_classes=loader.info.num_classes, in_channels=loader.info.channels)
    net = net.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    watch, steps = Stopwatch(device, clock=now), 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        batches = iter(loader)
        first = next(batches)  # the trainer also takes its first batch before starting its timer
        with watch.time():
            for xb, yb in _chain(first, batches):
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
    return {'steps': steps, 'images': steps * loader.batch_size, 'train_seconds': watch.seconds,
            'images_per_second': steps * loader.batch_size / watch.seconds}


def _chain(first, rest):
    yield first
    yield from rest


def incres_loop(config: dict) -> dict:
    "One `Trainer.fit()` in a throw-away directory; the trainer's own timing plus what it leaves out."
    flops = TimedFlopCounter()
    with tempfile.TemporaryDirectory(prefix='incres-overhead-') as out:
        start = now()  # evaluation is off: outside `train_seconds`, it would only add wall time
        m = Trainer(config, out, evaluation=False, flop_counter=flops, clock=now).fit()
        total = now() - start
    images = m['steps'] * config['dataset']['batch_size']
    return {'steps': m['steps'], 'images': images, 'train_seconds': m['train_seconds'],
            'images_per_second': m['images_per_second'], 'flop_count_seconds': flops.seconds,
            'flop_counts': flops.calls, 'fit_seconds': total,
            'other_fixed_seconds': total - m['train_seconds'] - flops.seconds}


def warm_up(loader, depth: int, device: torch.device, steps: int = 3):
    ("Untimed full training steps, so that neither side pays for first-use costs "
     "(allocator, oneDNN/cuDNN kernel choice).")
    torch.manual_seed(0)
    net = resnet(depth, num_classes=loader.info.num_classes, in_channels=loader.info.channels)
    net = net.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for i, (xb, yb) in enumerate(loader):
        if i == steps: break
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


TABLE_HEADER = (f'| {"round":>5} | {"loop":<6} | {"steps":>5} | {"images":>6} | {"train s":>8} | {"images/s":>8} | '
                f'{"FLOP count s":>12} | {"other fixed s":>13} |\n'
                f'|{"-" * 7}|{"-" * 8}|{"-" * 7}|{"-" * 8}|{"-" * 10}|{"-" * 10}|{"-" * 14}|{"-" * 15}|')


def table_row(r: dict) -> str:
    extra = (f'{r["flop_count_seconds"]:12.2f} | {r["other_fixed_seconds"]:13.2f}' if r['loop'] == 'incres'
             else f'{"":12} | {"":13}')
    return (f'| {r["round"]:5d} | {r["loop"]:<6} | {r["steps"]:5d} | {r["images"]:6d} | {r["train_seconds"]:8.2f} | '
            f'{r["images_per_second"]:8.1f} | {extra} |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--depth', type=int, default=20, help='ResNet depth (6n+2)')
    p.add_argument('--batch-size', type=int, default=128, help='training batch size of both loops')
    p.add_argument('--steps', type=int, default=25,
                   help='training steps per measurement (25 × 128 images: ~11 s per loop, ~25 s per round, '
                        'for ResNet-20 at ~300 images/s on the 2-core development machine)')
    p.add_argument('--rounds', type=int, default=6, help='rounds of (bare, incres) measurements; medians are compared')
    p.add_argument('--dataset', choices=('cifar10', 'synthetic'), default=None,
                   help='training images (default: cifar10 if prepared under --root, else synthetic)')
    p.add_argument('--root', default='data', help='prepared datasets')
    p.add_argument('--device', default='auto', help="'cpu', 'cuda' or 'auto' (CUDA if available)")
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--clock', choices=CLOCKS, default='wall', help=CLOCK_HELP)
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    if args.dataset is None: args.dataset = 'cifar10' if is_prepared('cifar10', args.root) else 'synthetic'
    if args.device == 'auto': args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device, load_before = torch.device(args.device), load_average()

    plan = measurement_plan(args.dataset, args.batch_size, args.steps)
    # the trainer's own choices (seed 0, channels last)
    loader = make_loaders(args.dataset, args.root, batch_size=args.batch_size, subset=plan['subset'], val_size=0,
                          seed=0, device=device, channels_last=True).train
    config = incres_config(args, plan)
    warm_up(loader, args.depth, device)

    print(f'ResNet-{args.depth}, batch {args.batch_size}, {args.dataset}, device {device}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads; {plan["epochs"] * plan["steps_per_epoch"]} steps '
          f'({plan["epochs"]} epoch(s)) per measurement; load average {load_before} at start')
    if busy_warning(args.clock): print(busy_warning(args.clock))
    print(f'seconds below are {args.clock} seconds', TABLE_HEADER, sep='\n', flush=True)
    rows = []  # printed as they come: on a busy machine a slow run still shows what it has measured
    with clock(args.clock):
        for r in range(1, args.rounds + 1):
            for loop, measure in (('bare', lambda: bare_loop(loader, plan['epochs'], args.depth, device)),
                                  ('incres', lambda: incres_loop(config))):
                rows.append({'round': r, 'loop': loop, **measure()})
                print(table_row(rows[-1]), flush=True)
    bare = [x for x in rows if x['loop'] == 'bare']
    ours = [x for x in rows if x['loop'] == 'incres']
    if {x['images'] for x in rows} != {bare[0]['images']}:
        raise RuntimeError(f'the loops trained on different numbers of images: {[x["images"] for x in rows]}')

    bare_ips = statistics.median(x['images_per_second'] for x in bare)
    ours_ips = statistics.median(x['images_per_second'] for x in ours)
    flop_s = statistics.median(x['flop_count_seconds'] for x in ours)
    train_s = statistics.median(x['train_seconds'] for x in ours)
    ratio = ours_ips / bare_ips
    # each incres run against the bare run just before it: less sensitive to load that drifts over the whole benchmark
    paired = statistics.median(o['images_per_second'] / b['images_per_second'] for b, o in zip(bare, ours))
    # counting the one-off FLOP measurement as training time: what it would cost if the trainer timed it
    ratio_with_flop_count = (bare[0]['images'] / (train_s + flop_s)) / bare_ips

    print(f'load average at end: {load_average()}')
    print(f'median images/s: bare {bare_ips:.1f}, incres {ours_ips:.1f}; spread bare '
          f'{min(x["images_per_second"] for x in bare):.1f}–{max(x["images_per_second"] for x in bare):.1f}, incres '
          f'{min(x["images_per_second"] for x in ours):.1f}–{max(x["images_per_second"] for x in ours):.1f}')
    print(f'median of the per-round ratios incres/bare (each pair measured back to back): {paired:.3f}')
    print(f'one-off FLOP count per new architecture (outside train_seconds): {flop_s:.2f} s = '
          f'{flop_s / train_s:.1%} of this run\'s training time; ratio if it were counted: {ratio_with_flop_count:.3f}')
    path = write_results('engine_overhead', {
        'settings': {**vars(args), 'epochs': plan['epochs'], 'subset': plan['subset']}, 'incres_config': config,
        'load_average_at_start': load_before, 'rounds': rows,
        'median_images_per_second': {'bare': bare_ips, 'incres': ours_ips},
        'median_paired_ratio': paired, 'median_flop_count_seconds': flop_s,
        'ratio_with_flop_count': ratio_with_flop_count,
        'target': TARGET, 'ratio': ratio})
    print(f'results written to {path}')
    print(f'incres/bare images per second: {ratio:.3f} (target ≥ {TARGET})')


if __name__ == '__main__':
    main()
