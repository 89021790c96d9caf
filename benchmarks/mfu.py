"""Close to the machine: model FLOP utilisation (MFU) of ResNet training steps, i.e. the FLOP/s a training step
achieves divided by the FLOP/s of a dense matrix multiplication of the same precision on the same device, measured in
the same run.

    .venv/bin/python benchmarks/mfu.py                          # ResNet-8, -20, -56 on the CPU (and CUDA if present)
    .venv/bin/python benchmarks/mfu.py --depths 20 --seconds 5 --threads 1
    .venv/bin/python benchmarks/mfu.py --devices cuda --precision bf16 --batch-size 512 --runs benchmarks/gpu/runs \
        --results-dir benchmarks/gpu/results --name mfu-gpu   # the GPU pipeline's stage (benchmarks/gpu/dvc.yaml)

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

`--precision bf16` runs the steps under bf16 autocast (as the trainer's `train.amp_bf16`) and measures a bf16 matmul
peak instead; on CUDA the GPU's datasheet dense bf16 peak is reported beside the measured one when the GPU is known
(`DATASHEET_BF16`). `--runs DIR` also reads every finished run under DIR (`<dataset>/<strategy>/logs/<run>/
metrics.json`, as the pipelines write them) and reports its images/s, its FLOP/s (`train_flops / train_seconds`),
their MFU against the peak measured here, and its FLOPs and seconds as ratios to the e2e run of the same dataset and
seed. An MFU above 1 means the peak was not an upper bound or a FLOP count is wrong: the script then stops with an
error (exit status 1), after writing the results.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from incres.compute import Stopwatch, matmul_flops_per_second, native_bf16, train_step_flops
from incres.resnet import resnet
from incres.network import Network, TrainStep

from _common import CLOCK_HELP, CLOCKS, RESULTS_DIR, busy_warning, clock, load_average, now, write_results

CIFAR_SHAPE, CIFAR_CLASSES = (3, 32, 32), 10
MEMORY_FORMATS = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16}
DEFAULT_MATMUL_SIZES = {'cpu': [1024, 2048], 'cuda': [2048, 4096, 8192]}
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s, by a part of torch's device name; the
# first match wins (the H100 NVL and PCIe before the SXM part, whose name is 'NVIDIA H100 80GB HBM3').
DATASHEET_BF16 = (('H200', 989.4e12), ('H100 NVL', 835.5e12), ('H100 PCIe', 756.5e12), ('H100', 989.4e12),
                  ('A100', 312e12), ('L40S', 362.05e12), ('L4', 121e12))


def datasheet_peak(device: torch.device, precision: str) -> dict | None:
    "The datasheet's dense bf16 peak of this CUDA GPU, when it is in `DATASHEET_BF16` and `precision` is bf16."
    if device.type != 'cuda' or precision != 'bf16': return None
    name = torch.cuda.get_device_name(device)
    for part, flops in DATASHEET_BF16:
        if part in name: return {'gpu': name, 'matched': part, 'flops_per_second': flops,
                                 'source': 'NVIDIA datasheet, dense bf16 tensor-core peak (no sparsity)'}
    return None


def matmul_peak(device: torch.device, sizes: list, seconds: float, dtype=torch.float32) -> dict:
    "Dense n×n matmul FLOP/s in `dtype` per size; the best of them is the peak MFU is measured against."
    rates = {n: matmul_flops_per_second(device, n, dtype, seconds, clock=now) for n in sizes}
    return {'by_size': rates, 'best': max(rates.values())}


def training_step(depth: int, batch_size: int, device: torch.device, memory_format=torch.channels_last,
                  amp_dtype=None, optimizer: dict | None = None, compile_backend: str | None = None):
    """The trainer's end-to-end step for ResNet-`depth` on one fixed random batch: (step function, module, batch).
    `amp_dtype`: autocast to it (the trainer's `train.amp_bf16`); `optimizer`: more SGD options (e.g. `foreach`,
    `fused`); `compile_backend`: step through `torch.compile(module, backend=...)` (the module returned is not)."""
    torch.manual_seed(0)
    network = Network(resnet(depth, num_classes=CIFAR_CLASSES)).to(device, memory_format=memory_format).train()
    module = TrainStep(network)
    model = module if compile_backend is None else torch.compile(module, backend=compile_backend)
    opt = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                          **(optimizer or {}))
    x = torch.randn(batch_size, *CIFAR_SHAPE, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, CIFAR_CLASSES, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    def step():
        with autocast: loss = model(x, y)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, module, (x, y)


def time_steps(step, device: torch.device, seconds: float, min_windows: int, window: int) -> dict:
    """Seconds per step: median over windows of `window` steps, timed until `seconds` have passed and `min_windows`
    are done."""
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
    """FLOPs counted for one training step of ResNet-`depth`, seconds per step, and the FLOP/s they make (MFU comes
    later)."""
    step, module, batch = training_step(depth, args.batch_size, device, MEMORY_FORMATS[args.memory_format],
                                        PRECISIONS[args.precision] if args.precision != 'fp32' else None)
    flops = train_step_flops(module, *batch)
    window = 1 if device.type == 'cpu' else 20  # per-step synchronisation would hide CUDA's launch overlap
    timing = time_steps(step, device, args.seconds, args.min_steps, window)
    achieved = flops / timing['step_seconds']
    return {'device': str(device), 'precision': args.precision, 'depth': depth, 'batch_size': args.batch_size,
            'step_flops': flops,
            'flops_per_image': flops / args.batch_size, **timing,
            'images_per_second': args.batch_size / timing['step_seconds'], 'achieved_flops_per_second': achieved}


def measure_device(device: torch.device, args, peaks: dict) -> list:
    "Matmul peak, every model, the peak again (into `peaks[device]`): the rows of the table for `device`."
    dtype, sizes = PRECISIONS[args.precision], args.matmul_sizes or DEFAULT_MATMUL_SIZES.get(device.type, [1024, 2048])
    before = matmul_peak(device, sizes, args.matmul_seconds, dtype)
    rates = ', '.join(f'{n}²: {r / 1e9:.1f}' for n, r in before['by_size'].items())
    print(f'{device}: {args.precision} matmul {rates} GFLOP/s', flush=True)
    rows = [measure_model(d, args, device) for d in args.depths]
    after = matmul_peak(device, sizes, args.matmul_seconds, dtype)  # the machine may have changed meanwhile
    peak = max(before['best'], after['best'])
    fp32_bound = None
    if args.precision == 'bf16' and not native_bf16(device):
        # no native bf16: oneDNN computes bf16-autocast convolutions in fp32 while a bf16 matmul runs a slow reference
        # kernel, so the fp32 matmul peak is the upper bound of a bf16 step (bf16.py's bound_peaks)
        fp32_bound = matmul_peak(device, sizes, args.matmul_seconds, torch.float32)
        peak = max(peak, fp32_bound['best'])
    sheet = datasheet_peak(device, args.precision)
    for r in rows:
        r['mfu'] = r['achieved_flops_per_second'] / peak
        if sheet: r['mfu_datasheet'] = r['achieved_flops_per_second'] / sheet['flops_per_second']
    peaks[str(device)] = {'precision': args.precision, 'before': before, 'after': after, 'peak': peak,
                          'datasheet': sheet, 'fp32_bound': fp32_bound}
    print(f'{device}: {args.precision} matmul peak {peak / 1e9:.1f} GFLOP/s (best of before '
          f'{before["best"] / 1e9:.1f}, after {after["best"] / 1e9:.1f})'
          + (f'; datasheet {sheet["flops_per_second"] / 1e12:.0f} TFLOP/s ({sheet["gpu"]})' if sheet else ''),
          flush=True)
    if device.type == 'cuda' and args.precision == 'fp32' and torch.backends.cudnn.allow_tf32:
        print('note: cuDNN convolutions run in TF32 (torch default) while the peak is strict fp32 matmul')
    return rows


def read_runs(roots: list) -> list:
    "The metrics of every finished run under `roots`: `<dataset>/<strategy>/logs/<run>/metrics.json`."
    rows = []
    for root in roots:
        for path in sorted(Path(root).glob('**/logs/*/metrics.json')):
            m = json.loads(path.read_text())
            rows.append({'path': str(path), 'dataset': path.parents[3].name, 'strategy': path.parents[2].name,
                         'run': path.parent.name, 'device': m['device'], 'amp_bf16': m.get('amp_bf16'),
                         'depth': m['depth'], 'epochs': m['epochs'], 'test_acc': m['test_acc'],
                         'train_flops': m['train_flops'], 'train_seconds': m['train_seconds'],
                         'images_per_second': m['images_per_second'], 'flops_per_second': m['flops_per_second']})
    return rows


def runs_mfu(runs: list, peaks: dict, precision: str) -> list:
    """Each run's MFU against the peak measured here on its kind of device (None where none was), and its FLOPs and
    seconds as ratios to the e2e run of its dataset and seed name."""
    by_type = {torch.device(d).type: p for d, p in peaks.items()}
    e2e = {(r['dataset'], r['run']): r for r in runs if r['strategy'] == 'e2e'}
    for r in runs:
        peak = by_type.get(torch.device(r['device']).type)
        r['peak_precision'] = precision if peak else None
        r['mfu'] = r['flops_per_second'] / peak['peak'] if peak else None
        sheet = peak and peak['datasheet']
        r['mfu_datasheet'] = r['flops_per_second'] / sheet['flops_per_second'] if sheet else None
        ref = e2e.get((r['dataset'], r['run']))
        r['flops_ratio'] = r['train_flops'] / ref['train_flops'] if ref else None
        r['seconds_ratio'] = r['train_seconds'] / ref['train_seconds'] if ref else None
    return runs


def mfu_errors(rows: list, what) -> list:
    "One line for every row whose MFU exceeds 1: a peak that is not an upper bound, or a wrong FLOP count."
    return [f'{what(r)} reaches {r["mfu"]:.2f} of the measured matmul peak: the peak is not an upper bound (too few '
            'matrix sizes timed?) or the FLOP count is wrong; a bug in this benchmark, not a result'
            for r in rows if r.get('mfu') is not None and r['mfu'] > 1]


def print_table(rows: list):
    print(f'| {"device":<6} | {"model":<9} | {"GFLOP/image":>11} | {"steps":>5} | {"ms/step":>8} | {"images/s":>8} | '
          f'{"GFLOP/s":>8} | {"MFU":>5} |')
    print(f'|{"-" * 8}|{"-" * 11}|{"-" * 13}|{"-" * 7}|{"-" * 10}|{"-" * 10}|{"-" * 10}|{"-" * 7}|')
    for r in rows:
        print(f'| {r["device"]:<6} | ResNet-{r["depth"]:<2} | {r["flops_per_image"] / 1e9:11.3f} | '
              f'{r["steps_timed"]:5d} | {1e3 * r["step_seconds"]:8.1f} | {r["images_per_second"]:8.1f} | '
              f'{r["achieved_flops_per_second"] / 1e9:8.1f} | {r["mfu"]:5.2f} |')


def print_runs(runs: list):
    fmt = lambda v, spec: '—' if v is None else format(v, spec)
    print('| run | device | bf16 | test acc | images/s | TFLOP/s | MFU | MFU (datasheet) | FLOPs / e2e | '
          'seconds / e2e |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in runs:
        print(f'| {r["dataset"]}/{r["strategy"]}/{r["run"]} | {r["device"]} | {r["amp_bf16"]} '
              f'| {fmt(r["test_acc"], ".4f")} | {r["images_per_second"]:,.0f} | {r["flops_per_second"] / 1e12:.2f} '
              f'| {fmt(r["mfu"], ".4f")} | {fmt(r["mfu_datasheet"], ".4f")} | {fmt(r["flops_ratio"], ".2f")} '
              f'| {fmt(r["seconds_ratio"], ".2f")} |')


def show(path: Path) -> int:
    "Print what a results file of this script holds: the machine, the peaks, the models' and the runs' tables."
    r = json.loads(Path(path).read_text())
    m = r['machine']
    print(f"{path}: {m.get('gpu') or m.get('cpu')}, torch {m['torch']}, {m['date']}; command: {m['command']}")
    for device, peak in r['matmul_flops_per_second'].items():
        sheet = peak.get('datasheet')
        print(f"{device}: {peak.get('precision', 'fp32')} matmul peak {peak['peak'] / 1e12:.2f} TFLOP/s"
              + (f", datasheet {sheet['flops_per_second'] / 1e12:.1f} TFLOP/s" if sheet else ''))
    print_table(r['models'])
    if r.get('runs'): print_runs(r['runs'])
    for e in r.get('errors') or []: print(f'error: {e}')
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--depths', type=int, nargs='+', default=[8, 20, 56],
                   help='ResNet depths (6n+2); the last line reports 20 if given, else the first')
    p.add_argument('--batch-size', type=int, default=128, help='training batch size')
    p.add_argument('--seconds', type=float, default=8.0, help='seconds of timed training steps per model')
    p.add_argument('--min-steps', type=int, default=3, help='timed windows per model at least, however long they take')
    p.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []),
                   help='devices to measure')
    p.add_argument('--matmul-sizes', type=int, nargs='+', default=None,
                   help=f'n of the n×n matmuls timed for the peak (default: {DEFAULT_MATMUL_SIZES})')
    p.add_argument('--matmul-seconds', type=float, default=1.0, help='seconds of matmuls per size and measurement')
    p.add_argument('--memory-format', choices=sorted(MEMORY_FORMATS), default='channels_last',
                   help="the trainer's channels_last (train.channels_last, default) or torch's default layout; "
                        "'contiguous' writes results/mfu-contiguous.json")
    p.add_argument('--precision', choices=sorted(PRECISIONS), default='fp32',
                   help='fp32, or bf16 autocast steps (train.amp_bf16) against a bf16 matmul peak')
    p.add_argument('--runs', nargs='+', default=[], metavar='DIR',
                   help='also report the finished runs under DIR (<dataset>/<strategy>/logs/<run>/metrics.json)')
    p.add_argument('--results-dir', type=Path, default=RESULTS_DIR, help='where the JSON goes')
    p.add_argument('--name', default=None,
                   help="the JSON's name (default: mfu, mfu-<memory format>, with -bf16 for --precision bf16)")
    p.add_argument('--show', type=Path, default=None, metavar='JSON',
                   help='measure nothing: print the peaks and tables of a results file this script wrote')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument('--clock', choices=CLOCKS, default='wall',
                   help=CLOCK_HELP + '; the matmul peak is timed with the same clock')
    args = p.parse_args(argv)
    if args.show: return show(args.show)
    if args.threads: torch.set_num_threads(args.threads)
    load_before = load_average()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, '
          f'{args.precision}, load average {load_before} at start; {args.clock} clock', flush=True)
    if busy_warning(args.clock): print(busy_warning(args.clock))

    rows, peaks = [], {}
    with clock(args.clock):
        for name in args.devices: rows += measure_device(torch.device(name), args, peaks)
    print_table(rows)
    runs = runs_mfu(read_runs(args.runs), peaks, args.precision)
    if runs: print_runs(runs)
    print(f'load average at end: {load_average()}')
    key_depth = 20 if 20 in args.depths else args.depths[0]
    key = next(r for r in reversed(rows) if r['depth'] == key_depth)  # the last device measured: CUDA when there is one
    name = args.name or ('mfu' if args.memory_format == 'channels_last' else f'mfu-{args.memory_format}') + (
        '' if args.precision == 'fp32' else f'-{args.precision}')
    errors = (mfu_errors(rows, lambda r: f'ResNet-{r["depth"]} on {r["device"]}')
              + mfu_errors(runs, lambda r: f'run {r["dataset"]}/{r["strategy"]}/{r["run"]}'))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results(name, {'settings': settings, 'load_average_at_start': load_before, 'precision': args.precision,
                                'matmul_flops_per_second': peaks, 'models': rows, 'runs': runs,
                                'key': {'depth': key_depth, 'device': key['device'], 'mfu': key['mfu']},
                                'errors': errors}, results_dir=args.results_dir,
                         device=torch.device(args.devices[-1]), precision=PRECISIONS[args.precision])
    print(f'results written to {path}')
    if errors:
        for e in errors: print(f'mfu.py: error: {e}', file=sys.stderr)
        return 1
    print(f'MFU ResNet-{key_depth}: {key["mfu"]:.2f} ({key["device"]}, {args.precision}, against the '
          f'{peaks[key["device"]]["peak"] / 1e9:.1f} GFLOP/s matmul peak)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
