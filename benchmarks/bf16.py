"""bf16 on the CPU as a lever: images/s of fp32 against bf16-autocast training steps of ResNet-8, -20 and -56 in
alternating rounds of one process, and each precision's model FLOP utilisation against a matmul peak of the same
precision measured in the same run, beside the theoretical peak of the cores.

    .venv/bin/python benchmarks/bf16.py                         # on an idle machine: about 5 minutes on 2 cores
    .venv/bin/python benchmarks/bf16.py --compile --optimizers  # + torch.compile and the SGD implementations
    .venv/bin/python benchmarks/bf16.py --smoke                 # tiny sizes, seconds: what the test suite runs

The step is mfu.py's (`TrainStep` forward with cross-entropy, backward, SGD with momentum 0.9, Nesterov, weight decay
1e-4, zero_grad; channels-last; one fixed random CIFAR-shaped batch), in fp32 or under `torch.autocast('cpu',
torch.bfloat16)` as the trainer's `train.amp_bf16` runs it. Its FLOPs are counted once per depth by
`incres.compute.train_step_flops` (convolutions and matrix products; the same count for both precisions). Every round
times every variant for `--seconds` (at least `--min-steps` steps), in one order in even rounds and the reverse in odd
ones, after two untimed warm-up steps per variant; medians over rounds are reported, and speed-ups are medians of the
ratios within a round.

Peaks. Measured: dense n×n matmuls (`incres.compute.matmul_flops_per_second`, best of repeated batches) in fp32 and in
bf16, for every size of `--matmul-sizes` and every thread count of `--thread-settings`, before and after the training
steps; the best of all is the peak, so it is an upper bound of what this machine's matmul library reaches. An MFU
above 1 against it means a peak too low or a FLOP count too high, a bug of this benchmark: the script then writes its
results and stops with an error (exit status 1). Theoretical: cores x clock x FLOP per cycle and core of the
instruction set (`theoretical_peak`: vector width / 32 lanes x 2 (fused multiply-add) x `--fma-units` for fp32;
AVX-512 BF16's VDPBF16PS does two products and two sums per fp32 lane, twice the fp32 rate; AMX-BF16 1024 per cycle;
AMD Zen 4 runs 512-bit operations as two 256-bit halves). The clock is cpufreq's maximum where the kernel exposes it,
else lscpu's "CPU max MHz", else the largest "cpu MHz" of /proc/cpuinfo (the clock the kernel last read, in a virtual
machine often the nominal one, below the boost clock): the JSON says which. A measured peak above the theoretical one
is reported as a warning (a clock read below the running one), not an error.

Levers (optional): `--compile` times `torch.compile` (backend `--compile-backend`) of the ResNet-`--lever-depth` step
in both precisions (the first steps' seconds, compilation included, and then images/s against eager); `--optimizers`
times SGD's for-loop (torch's default on the CPU, what the trainer uses there), `foreach` and `fused` implementations.
Results go to benchmarks/results/bf16.json (`--smoke`: bf16-smoke.json) with the machine (`_common.write_results`).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from incres.compute import matmul_flops_per_second, train_step_flops
from incres.io import atomic_write

from _common import RESULTS_DIR, busy_warning, load_average, write_results
from mfu import training_step

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}
MATMUL_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
OPTIMIZERS = {'foreach': {'foreach': True}, 'fused': {'fused': True}}  # against the default: for-loop on the CPU
SMOKE = dict(depths=[8], batch_size=4, rounds=2, seconds=0.0, min_steps=1, matmul_sizes=[64, 128],
             thread_settings=[1], matmul_seconds=0.01, lever_depth=8)


# ---------------------------------------------------------------------------------------------------- the machine
def _cpuinfo(path='/proc/cpuinfo') -> list:
    "The processor blocks of /proc/cpuinfo as dicts (empty where there is none)."
    try: text = Path(path).read_text()
    except OSError: return []
    blocks = []
    for block in text.strip().split('\n\n'):
        fields = dict(line.split(':', 1) for line in block.splitlines() if ':' in line)
        blocks.append({k.strip(): v.strip() for k, v in fields.items()})
    return blocks


def _lscpu(field: str) -> str | None:
    try: out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError): return None
    m = re.search(rf'^{re.escape(field)}:\s*(.+)$', out, re.M)
    return m.group(1).strip() if m else None


def cpu_clock(blocks: list) -> tuple:
    "(MHz, where it was read): cpufreq's maximum, else lscpu's CPU max MHz, else the largest cpu MHz of /proc/cpuinfo."
    try:
        khz = int(Path('/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq').read_text())
        return khz / 1000, 'cpufreq cpuinfo_max_freq (maximum clock)'
    except (OSError, ValueError): pass
    mhz = _lscpu('CPU max MHz')
    if mhz:
        try: return float(mhz), 'lscpu CPU max MHz'
        except ValueError: pass
    readings = [float(b['cpu MHz']) for b in blocks if 'cpu MHz' in b]
    if readings:
        return max(readings), ('/proc/cpuinfo cpu MHz (the clock the kernel last read; in a virtual machine often the '
                               'nominal clock, below the boost clock)')
    return None, 'unknown'


def flop_per_cycle(flags: set, vendor: str = '', family: int = -1, fma_units: int = 2) -> dict:
    "FLOP per cycle and core, fp32 and bf16, of the widest vector instructions `flags` name, with what was assumed."
    if 'avx512f' in flags: isa, bits = 'AVX-512', 512
    elif {'avx2', 'fma'} <= flags: isa, bits = 'AVX2 + FMA', 256
    elif 'avx' in flags: isa, bits = 'AVX', 256
    elif 'asimd' in flags: isa, bits = 'NEON', 128
    else: isa, bits = 'SSE', 128
    datapath = 256 if (isa == 'AVX-512' and vendor == 'AuthenticAMD' and family == 25) else bits  # Zen 4: halves
    fp32 = 2 * (datapath // 32) * fma_units
    if 'amx_bf16' in flags:
        bf16, bf16_isa = 1024, 'AMX-BF16 (TDPBF16PS; 1024 FLOP per cycle and core as on Sapphire Rapids)'
    elif 'avx512_bf16' in flags:
        bf16, bf16_isa = 2 * fp32, 'AVX-512 BF16 (VDPBF16PS: two products and two sums per fp32 lane)'
    else:
        bf16, bf16_isa = fp32, 'no native bf16: converted to fp32, at best the fp32 rate'
    return {'isa': isa, 'vector_bits': bits, 'datapath_bits': datapath, 'fma_units': fma_units,
            'fp32': fp32, 'bf16': bf16, 'bf16_isa': bf16_isa}


def theoretical_peak(fma_units: int = 2, mhz: float | None = None) -> dict:
    "Cores x clock x FLOP per cycle and core, fp32 and bf16, and how each factor was found."
    blocks = _cpuinfo()
    first = blocks[0] if blocks else {}
    flags = set(first.get('flags', first.get('Features', '')).split())
    try: family = int(first.get('cpu family', -1))
    except ValueError: family = -1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    try: per_core = max(1, int(first['siblings']) // int(first['cpu cores']))
    except (KeyError, ValueError, ZeroDivisionError): per_core = 1
    cores = max(1, usable // per_core)
    source = '--clock-mhz' if mhz else None
    if mhz is None: mhz, source = cpu_clock(blocks)
    cycle = flop_per_cycle(flags, first.get('vendor_id', ''), family, fma_units)
    out = {'cores': cores, 'cpus_usable': usable, 'threads_per_core': per_core, 'clock_mhz': mhz,
           'clock_source': source, 'flop_per_cycle_per_core': cycle, 'vendor': first.get('vendor_id'),
           'cpu_family': family, 'model': first.get('model name')}
    for p in ('fp32', 'bf16'): out[p] = cores * mhz * 1e6 * cycle[p] if mhz else None
    return out


def matmul_sweep(sizes: list, thread_settings: list, seconds: float) -> dict:
    "Matmul FLOP/s per precision, thread count and size, and the best per precision: the peaks MFU is measured against."
    rows, saved = [], torch.get_num_threads()
    try:
        for threads in thread_settings:
            torch.set_num_threads(threads)
            for precision, dtype in MATMUL_DTYPES.items():
                for n in sizes:
                    rows.append({'precision': precision, 'threads': threads, 'n': n,
                                 'flops_per_second': matmul_flops_per_second('cpu', n, dtype, seconds)})
    finally: torch.set_num_threads(saved)
    best = {p: max((r for r in rows if r['precision'] == p), key=lambda r: r['flops_per_second'])
            for p in MATMUL_DTYPES}
    return {'by': rows, 'best': best}


# ------------------------------------------------------------------------------------------------ training steps
def variants(args) -> list:
    "Every timed step: each depth in both precisions, then the levers asked for (at `--lever-depth`)."
    out = [{'label': f'ResNet-{d} {p}', 'depth': d, 'precision': p, 'lever': 'eager'}
           for d in args.depths for p in PRECISIONS]
    for p in PRECISIONS:
        if args.compile:
            out.append({'label': f'ResNet-{args.lever_depth} {p} compiled', 'depth': args.lever_depth, 'precision': p,
                        'lever': 'compiled'})
        if args.optimizers:
            out += [{'label': f'ResNet-{args.lever_depth} {p} SGD {name}', 'depth': args.lever_depth, 'precision': p,
                     'lever': name} for name in OPTIMIZERS]
    return out


def build(v: dict, args) -> None:
    "The step function of variant `v`, warmed up (two steps, compilation included: their seconds are kept)."
    step, module, batch = training_step(v['depth'], args.batch_size, torch.device('cpu'),
                                        amp_dtype=PRECISIONS[v['precision']], optimizer=OPTIMIZERS.get(v['lever']),
                                        compile_backend=args.compile_backend if v['lever'] == 'compiled' else None)
    v['flops_per_image'] = train_step_flops(module, *batch) / args.batch_size
    start = time.perf_counter()
    for _ in range(2): step()
    v['warmup_seconds'] = time.perf_counter() - start
    v['step'], v['images_per_second_by_round'] = step, []


def time_variant(v: dict, args) -> float:
    "Images/s of one timing: steps until `--seconds` have passed and at least `--min-steps` were taken."
    steps, start = 0, time.perf_counter()
    while steps < args.min_steps or time.perf_counter() - start < args.seconds:
        v['step'](); steps += 1
    return steps * args.batch_size / (time.perf_counter() - start)


def run_rounds(vs: list, args) -> None:
    "Alternating rounds: every variant once per round, the order reversed every other round."
    for r in range(args.rounds):
        for v in (vs if r % 2 == 0 else vs[::-1]):
            if 'error' not in v: v['images_per_second_by_round'].append(time_variant(v, args))
        done = ', '.join(f"{v['label']} {v['images_per_second_by_round'][-1]:.0f}" for v in vs if 'error' not in v)
        print(f'round {r + 1}/{args.rounds} (images/s): {done}', flush=True)


def paired(vs: list, num: dict, den: dict) -> float | None:
    "Median over rounds of images/s of `num` / `den` within the same round."
    a, b = num['images_per_second_by_round'], den['images_per_second_by_round']
    return statistics.median(x / y for x, y in zip(a, b)) if a and b else None


def summarise(vs: list, peaks: dict, theory: dict) -> tuple:
    "Rows per variant (medians, FLOP/s, MFU against each peak) and the speed-ups of every lever."
    rows = []
    for v in vs:
        row = {k: v[k] for k in ('label', 'depth', 'precision', 'lever')}
        if 'error' in v: rows.append({**row, 'error': v['error']}); continue
        ips = v['images_per_second_by_round']
        achieved = statistics.median(ips) * v['flops_per_image']
        row.update(flops_per_image=v['flops_per_image'], warmup_seconds=v['warmup_seconds'],
                   images_per_second=statistics.median(ips), images_per_second_min=min(ips),
                   images_per_second_max=max(ips), rounds=len(ips), achieved_flops_per_second=achieved,
                   mfu=achieved / peaks[v['precision']]['flops_per_second'],
                   mfu_vs_fp32_peak=achieved / peaks['fp32']['flops_per_second'],
                   mfu_vs_bf16_peak=achieved / peaks['bf16']['flops_per_second'],
                   of_theoretical=achieved / theory[v['precision']] if theory[v['precision']] else None)
        rows.append(row)
    find = lambda d, p, lever: next((v for v in vs if (v['depth'], v['precision'], v['lever']) == (d, p, lever)
                                     and 'error' not in v), None)
    speedups = []
    for v in vs:
        if 'error' in v: continue
        if v['lever'] == 'eager' and v['precision'] == 'bf16':
            base, what = find(v['depth'], 'fp32', 'eager'), 'bf16 autocast / fp32'
        elif v['lever'] != 'eager':
            base, what = find(v['depth'], v['precision'], 'eager'), f"{v['lever']} / eager default SGD"
        else: continue
        if base is not None:
            speedups.append({'depth': v['depth'], 'precision': v['precision'], 'lever': what,
                             'speedup': paired(vs, v, base)})
    return rows, speedups


def bound_peaks(peaks: dict, theory: dict) -> dict:
    """The peaks MFU is measured against. Without native bf16 (no AVX-512 BF16 or AMX), oneDNN computes bf16-autocast
    convolutions by converting to fp32, while a bf16 matmul runs a slow reference kernel: the bf16 matmul rate is then
    no upper bound of a bf16 step, the fp32 peak is (seen: a ResNet-20 bf16 step at 2.3x the bf16 matmul rate)."""
    if theory['flop_per_cycle_per_core']['bf16'] > theory['flop_per_cycle_per_core']['fp32']: return peaks
    if peaks['bf16']['flops_per_second'] >= peaks['fp32']['flops_per_second']: return peaks
    return {**peaks, 'bf16': {**peaks['fp32'], 'precision': 'bf16', 'measured_bf16_matmul': peaks['bf16'],
                              'bound': 'the fp32 matmul peak: no native bf16 here, so autocast computes in fp32'}}


def rescore(results: dict) -> dict:
    "A saved bf16.json with its MFU columns and errors recomputed against `bound_peaks` (the timings unchanged)."
    theory = results['theoretical_peak']
    peaks = bound_peaks(results['matmul_peak']['peak'], theory)
    for r in results['steps']:
        if 'achieved_flops_per_second' not in r: continue
        got = r['achieved_flops_per_second']
        r.update(mfu=got / peaks[r['precision']]['flops_per_second'],
                 mfu_vs_fp32_peak=got / peaks['fp32']['flops_per_second'],
                 mfu_vs_bf16_peak=got / peaks['bf16']['flops_per_second'])
    results['matmul_peak']['peak'] = peaks
    return {**results, 'errors': mfu_errors(results['steps'])}


def mfu_errors(rows: list) -> list:
    "One line per row whose MFU exceeds 1 against the measured peak of its own precision."
    return [f"{r['label']} reaches {r['mfu']:.2f} of the measured {r['precision']} matmul peak: the peak is not an "
            'upper bound (too few matrix sizes or thread counts timed?) or the FLOP count is wrong; a bug in this '
            'benchmark, not a result' for r in rows if r.get('mfu') is not None and r['mfu'] > 1]


def peak_warnings(peaks: dict, theory: dict) -> list:
    return [f"the measured {p} matmul peak ({peaks[p]['flops_per_second'] / 1e9:.1f} GFLOP/s) exceeds the theoretical "
            f"one ({theory[p] / 1e9:.1f}): the clock read ({theory['clock_mhz']:.0f} MHz, {theory['clock_source']}) "
            'is below the clock the cores ran at, or the instruction-set table does not fit this CPU'
            for p in MATMUL_DTYPES if theory[p] and peaks[p]['flops_per_second'] > theory[p]]


def print_report(rows: list, speedups: list, peaks: dict, theory: dict) -> None:
    cycle = theory['flop_per_cycle_per_core']
    for p in MATMUL_DTYPES:
        best = peaks[p]
        t = f"{theory[p] / 1e9:.1f} GFLOP/s" if theory[p] else 'unknown'
        print(f"{p} peak: measured {best['flops_per_second'] / 1e9:.1f} GFLOP/s ({best['n']}², {best['threads']} "
              f"threads); theoretical {t} = {theory['cores']} cores x {theory['clock_mhz'] or 0:.0f} MHz x "
              f"{cycle[p]} FLOP/cycle ({cycle['isa'] if p == 'fp32' else cycle['bf16_isa']}; clock: "
              f"{theory['clock_source']})")
    print('| step | images/s median (range) | GFLOP/s | MFU (own peak) | vs fp32 peak | vs bf16 peak | '
          'of theoretical |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        if 'error' in r: print(f"| {r['label']} | error: {r['error'][:80]} | | | | | |"); continue
        theo = '—' if r['of_theoretical'] is None else f"{r['of_theoretical']:.3f}"
        print(f"| {r['label']} | {r['images_per_second']:.1f} ({r['images_per_second_min']:.1f}–"
              f"{r['images_per_second_max']:.1f}) | {r['achieved_flops_per_second'] / 1e9:.1f} | {r['mfu']:.3f} | "
              f"{r['mfu_vs_fp32_peak']:.3f} | {r['mfu_vs_bf16_peak']:.3f} | {theo} |")
    for s in speedups:
        if s['speedup'] is not None:
            print(f"ResNet-{s['depth']} {s['precision']}: {s['lever']} = {s['speedup']:.2f}x images/s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--depths', type=int, nargs='+', default=[8, 20, 56], help='ResNet depths (6n+2)')
    p.add_argument('--batch-size', type=int, default=128, help='training batch size')
    p.add_argument('--rounds', type=int, default=4, help='alternating rounds over every variant')
    p.add_argument('--seconds', type=float, default=3.0, help='seconds of steps per variant and round')
    p.add_argument('--min-steps', type=int, default=2, help='steps per variant and round at least')
    p.add_argument('--matmul-sizes', type=int, nargs='+', default=[512, 1024, 2048, 4096],
                   help='n of the n×n matmuls timed for the peaks')
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    p.add_argument('--thread-settings', type=int, nargs='+', default=sorted({1, max(1, cpus // 2), cpus}),
                   help='torch thread counts the matmul peaks are swept over')
    p.add_argument('--matmul-seconds', type=float, default=0.5, help='seconds of matmuls per size, precision, threads')
    p.add_argument('--threads', type=int, default=None, help="torch threads for the training steps (default: torch's)")
    p.add_argument('--fma-units', type=int, default=2, help='FMA units per core, for the theoretical peak')
    p.add_argument('--clock-mhz', type=float, default=None, help='the clock for the theoretical peak (default: read)')
    p.add_argument('--compile', action='store_true', help='also time torch.compile of the --lever-depth step')
    p.add_argument('--compile-backend', default='inductor', help="torch.compile's backend ('eager': no code generated)")
    p.add_argument('--optimizers', action='store_true', help='also time foreach and fused SGD at --lever-depth')
    p.add_argument('--lever-depth', type=int, default=20, help='the ResNet the levers are timed on')
    p.add_argument('--smoke', action='store_true', help=f'tiny sizes, seconds ({SMOKE}); writes bf16-smoke.json')
    p.add_argument('--results-dir', type=Path, default=RESULTS_DIR, help='where the JSON goes')
    p.add_argument('--rescore', type=Path, default=None,
                   help='train nothing: recompute the MFU of a saved JSON against the peaks bound_peaks gives')
    args = p.parse_args(argv)
    if args.rescore:
        results = rescore(json.loads(args.rescore.read_text()))
        results['rescored'] = {'by': 'bf16.py --rescore (bound_peaks)', 'date': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
        atomic_write(args.rescore, json.dumps(results, indent=1) + '\n')
        for e in results['errors']: print(f'bf16.py: error: {e}', file=sys.stderr)
        print(f'rescored {args.rescore}')
        return 1 if results['errors'] else 0
    if args.smoke:
        for k, v in SMOKE.items(): setattr(args, k, v)
    if args.threads: torch.set_num_threads(args.threads)
    load_before = load_average()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads for training, batch {args.batch_size}, '
          f'load average {load_before} at start', flush=True)
    if busy_warning('cpu'): print(busy_warning('cpu'))  # (no clock hint: this script times wall seconds)

    theory = theoretical_peak(args.fma_units, args.clock_mhz)
    before = matmul_sweep(args.matmul_sizes, args.thread_settings, args.matmul_seconds)
    vs = variants(args)
    for v in vs:
        try: build(v, args)
        except Exception as e:  # a lever this torch or machine lacks (a compiler, fused SGD on the CPU): recorded
            if v['lever'] == 'eager': raise
            v['error'] = f'{type(e).__name__}: {e}'.splitlines()[0]
            print(f"{v['label']}: {v['error']}", flush=True)
    run_rounds(vs, args)
    after = matmul_sweep(args.matmul_sizes, args.thread_settings, args.matmul_seconds)
    peaks = {q: max(before['best'][q], after['best'][q], key=lambda r: r['flops_per_second']) for q in MATMUL_DTYPES}
    peaks = bound_peaks(peaks, theory)
    rows, speedups = summarise(vs, peaks, theory)
    print_report(rows, speedups, peaks, theory)
    errors, warnings = mfu_errors(rows), peak_warnings(peaks, theory)
    for w in warnings: print(f'bf16.py: warning: {w}')
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results('bf16-smoke' if args.smoke else 'bf16', {
        'settings': settings, 'training_threads': torch.get_num_threads(), 'load_average_at_start': load_before,
        'load_average_at_end': load_average(), 'theoretical_peak': theory,
        'matmul_peak': {'before': before, 'after': after, 'peak': peaks}, 'steps': rows, 'speedups': speedups,
        'errors': errors, 'warnings': warnings}, results_dir=args.results_dir, device='cpu')
    print(f'results written to {path}')
    if errors:
        for e in errors: print(f'bf16.py: error: {e}', file=sys.stderr)
        return 1
    key = next((s for s in speedups if s['lever'].startswith('bf16') and s['depth'] == 20), None) or next(
        (s for s in speedups if s['lever'].startswith('bf16')), None)
    mfu = {r['precision']: r['mfu'] for r in rows if key and r['depth'] == key['depth'] and r['lever'] == 'eager'}
    if key and key['speedup'] is not None:
        print(f"bf16/fp32 ResNet-{key['depth']}: {key['speedup']:.2f}x images/s; MFU fp32 {mfu['fp32']:.3f} of "
              f"{peaks['fp32']['flops_per_second'] / 1e9:.1f} GFLOP/s, bf16 {mfu['bf16']:.3f} of "
              f"{peaks['bf16']['flops_per_second'] / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
