"""Close to the machine: model FLOP utilisation (MFU) of ResNet training steps, i.e. the FLOP/s a training step
achieves divided by the FLOP/s of a dense fp32 matrix multiplication on the same device, measured in the same run.

    .venv/bin/python benchmarks/mfu.py                          # ResNet-8, -20, -56 on the CPU (and CUDA if present)
    .venv/bin/python benchmarks/mfu.py --depths 20 --seconds 5 --threads 1

A training step is what `incres.train.Trainer` runs for end-to-end training: `TrainStep` forward (cross-entropy),
backward, SGD step (momentum 0.9, Nesterov, weight decay 1e-4), zero_grad, channels-last, on random CIFAR-shaped
batches. Its FLOPs are counted once by `incres.compute.train_step_flops` (`torch.utils.flop_counter.FlopCounterMode`:
convolutions and matrix products of forward and backward; BatchNorm, ReLU and the optimiser's element-wise work are
not counted, as usual for MFU). Steps are timed in windows and the median window is used, so that a burst of load from
another process does not pull the number down; the matmul peak is `incres.compute.matmul_flops_per_second` (best of
repeated batches), the best over the sizes given, measured before and after the models. `--clock cpu` times CPU
seconds of this process instead of wall seconds (for a machine shared with other jobs; use it with `--threads 1`,
which then gives the utilisation of one core). Prints a table, then as the
last line the MFU of ResNet-20 (or of the first depth given). Results also go to benchmarks/results/mfu.json.
"""
import argparse
import statistics
import time

import torch

from incres.compute import Stopwatch, matmul_flops_per_second, train_step_flops
from incres.resnet import resnet
from incres.network import Network, TrainStep

from _common import CLOCK_HELP, CLOCKS, busy_warning, clock, load_average, now, write_results

CIFAR_SHAPE, CIFAR_CLASSES = (3, 32, 32), 10
MEMORY_FORMATS = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}


def matmul_peak(device: torch.device, sizes: list, seconds: float) -> dict:
    "Dense fp32 n×n matmul FLOP/s per size; the best of them is the peak MFU is measured against."
    rates = {n: matmul_flops_per_second(device, n, torch.float32, seconds, clock=now) for n in sizes}
    return {'by_size': rates, 'best': max(rates.values())}


def training_step(depth: int, batch_size: int, device: torch.device, memory_format=torch.channels_last):
    "The trainer's end-to-end step for ResNet-`depth` on one fixed random batch: (step function, module, batch)."
    torch.manual_seed(0)
    network = Network(resnet(depth, num_classes=CIFAR_CLASSES)).to(device, memory_format=memory_format).train()
    module = TrainStep(network)
    opt = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch_size, *CIFAR_SHAPE, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, CIFAR_CLASSES, (batch_size,), device=device)

    def step():
        loss = module(x, y)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, module, (x, y)


def time_steps(step, device: torch.device, seconds: float, min_windows: int, window: int) -> dict:
    "Seconds per step: median over windows of `window` steps, timed until `seconds` have passed and `min_windows` are done."
    for _ in range(2): step()  # warm-up: kernel selection, optimiser state, allocator
    times, start = [], time.perf_counter()
    while len(times) < min_windows or time.perf_counter() - start < seconds:
        watch = Stopwatch(device, clock=now)
        with watch.time():
            for _ in range(window): step()
        times.append(watch.seconds / window)
    return {'step_seconds': statistics.median(times), 'step_seconds_min': min(times), 'step_seconds_max': max(times),
            'steps_timed': len(times) * window}


def measure_model(depth: int, args, device: torch.device) -> dict:
    "FLOPs counted for one training step of ResNet-`depth`, seconds per step, and the FLOP/s they make (MFU comes later)."
    step, module, batch = training_step(depth, args.batch_size, device, MEMORY_FORMATS[args.memory_format])
    flops = train_step_flops(module, *batch)
    window = 1 if device.type == 'cpu' else 20  # per-step synchronisation would hide CUDA's launch overlap
    timing = time_steps(step, device, args.seconds, args.min_steps, window)
    achieved = flops / timing['step_seconds']
    return {'device': str(device), 'depth': depth, 'batch_size': args.batch_size, 'step_flops': flops,
            'flops_per_image': flops / args.batch_size, **timing,
            'images_per_second': args.batch_size / timing['step_seconds'], 'achieved_flops_per_second': achieved}


def measure_device(device: torch.device, args, peaks: dict) -> list:
    "Matmul peak, every model, the peak again (into `peaks[device]`): the rows of the table for `device`."
    before = matmul_peak(device, args.matmul_sizes, args.matmul_seconds)
    print(f'{device}: fp32 matmul ' + ', '.join(f'{n}²: {r / 1e9:.1f}' for n, r in before['by_size'].items())
          + ' GFLOP/s', flush=True)
    rows = [measure_model(d, args, device) for d in args.depths]
    after = matmul_peak(device, args.matmul_sizes, args.matmul_seconds)  # the machine may have changed meanwhile
    peak = max(before['best'], after['best'])
    for r in rows: r['mfu'] = r['achieved_flops_per_second'] / peak
    peaks[str(device)] = {'before': before, 'after': after, 'peak': peak}
    print(f'{device}: fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (best of before {before["best"] / 1e9:.1f}, '
          f'after {after["best"] / 1e9:.1f})', flush=True)
    if device.type == 'cuda' and torch.backends.cudnn.allow_tf32:
        print('note: cuDNN convolutions run in TF32 (torch default) while the peak is strict fp32 matmul')
    return rows


def print_table(rows: list):
    print(f'| {"device":<6} | {"model":<9} | {"GFLOP/image":>11} | {"steps":>5} | {"ms/step":>8} | {"images/s":>8} | '
          f'{"GFLOP/s":>8} | {"MFU":>5} |')
    print(f'|{"-" * 8}|{"-" * 11}|{"-" * 13}|{"-" * 7}|{"-" * 10}|{"-" * 10}|{"-" * 10}|{"-" * 7}|')
    for r in rows:
        print(f'| {r["device"]:<6} | ResNet-{r["depth"]:<2} | {r["flops_per_image"] / 1e9:11.3f} | {r["steps_timed"]:5d} | '
              f'{1e3 * r["step_seconds"]:8.1f} | {r["images_per_second"]:8.1f} | '
              f'{r["achieved_flops_per_second"] / 1e9:8.1f} | {r["mfu"]:5.2f} |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--depths', type=int, nargs='+', default=[8, 20, 56], help='ResNet depths (6n+2); the last line reports 20 if given, else the first')
    p.add_argument('--batch-size', type=int, default=128, help='training batch size')
    p.add_argument('--seconds', type=float, default=8.0, help='seconds of timed training steps per model')
    p.add_argument('--min-steps', type=int, default=3, help='timed windows per model at least, however long they take')
    p.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []),
                   help='devices to measure')
    p.add_argument('--matmul-sizes', type=int, nargs='+', default=[1024, 2048], help='n of the n×n fp32 matmuls timed for the peak')
    p.add_argument('--matmul-seconds', type=float, default=1.0, help='seconds of matmuls per size and measurement')
    p.add_argument('--memory-format', choices=sorted(MEMORY_FORMATS), default='channels_last',
                   help="the trainer's channels_last (train.channels_last, default) or torch's default layout; "
                        "'contiguous' writes results/mfu-contiguous.json")
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--clock', choices=CLOCKS, default='wall', help=CLOCK_HELP + '; the matmul peak is timed with the same clock')
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    load_before = load_average()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, '
          f'load average {load_before} at start; {args.clock} clock', flush=True)
    if busy_warning(args.clock): print(busy_warning(args.clock))

    rows, peaks = [], {}
    with clock(args.clock):
        for name in args.devices: rows += measure_device(torch.device(name), args, peaks)
    print_table(rows)
    print(f'load average at end: {load_average()}')
    key_depth = 20 if 20 in args.depths else args.depths[0]
    key = next(r for r in reversed(rows) if r['depth'] == key_depth)  # the last device measured: CUDA when there is one
    name = 'mfu' if args.memory_format == 'channels_last' else f'mfu-{args.memory_format}'
    path = write_results(name, {'settings': vars(args), 'load_average_at_start': load_before,
                                 'matmul_flops_per_second': peaks, 'models': rows,
                                 'key': {'depth': key_depth, 'device': key['device'], 'mfu': key['mfu']}})
    print(f'results written to {path}')
    print(f'MFU ResNet-{key_depth}: {key["mfu"]:.2f} ({key["device"]}, fp32, against the {peaks[key["device"]]["peak"] / 1e9:.1f} '
          f'GFLOP/s matmul peak)')


if __name__ == '__main__':
    main()
