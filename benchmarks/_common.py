"""Shared by the scripts in this folder: what every benchmark records next to its numbers (the machine, the software,
the time and the command, so that a result file can be read, and doubted, without knowing where it came from), and
the choice of clock."""
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from incres.io import atomic_write
from incres.provenance import cpu_model, machine_record  # noqa: F401 (cpu_model: scripts may import it from here)

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def load_average() -> list | None:
    "1, 5 and 15 minute load averages: on a shared machine they say how much the timings can be trusted."
    try: return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError): return None


def machine_info(device=None, precision=None) -> dict:
    """`incres.provenance.machine_record` (CPU model and flags, torch, oneDNN, threads, device, precision, Python,
    UTC date, the lock's sha256) plus the command line, the load average and, with CUDA, the GPU and TF32 switches."""
    info = {**machine_record(device, precision),
            'command': shlex.join(getattr(sys, 'orig_argv', [sys.executable] + sys.argv)),
            'load_average': load_average()}
    if torch.cuda.is_available():
        info['cuda_device'] = torch.cuda.get_device_name()
        info['cuda_tf32'] = {'matmul': torch.backends.cuda.matmul.allow_tf32, 'cudnn': torch.backends.cudnn.allow_tf32}
    return info


def write_results(name: str, results: dict, results_dir: Path = RESULTS_DIR, device=None, precision=None) -> Path:
    """Write `results` plus `machine_info(device, precision)` to <results_dir>/<name>.json atomically
    (`incres.io.atomic_write`)."""
    # a reader never sees half a file, and a crash leaves the previous result intact
    text = json.dumps({'machine': machine_info(device, precision), **results}, indent=2) + '\n'
    return atomic_write(Path(results_dir) / f'{name}.json', text)


CLOCKS = ('wall', 'cpu')
CLOCK_HELP = ("'wall': elapsed seconds (what a user waits); 'cpu': CPU seconds of this process (time.process_time), "
              "much less disturbed by other jobs on a shared machine, meaningful with --threads 1 (with more threads "
              "it also counts threads waiting for each other)")


_clock = time.perf_counter  # the clock `clock` selected; every timer here is given `now`


@contextlib.contextmanager
def clock(kind: str):
    "Inside the block `now` reads `kind` seconds; benchmarks pass `clock=now` to incres's timers and trainer."
    global _clock
    if kind not in CLOCKS: raise ValueError(f'clock must be one of {CLOCKS}, got {kind!r}')
    previous, _clock = _clock, (time.perf_counter if kind == 'wall' else time.process_time)
    try: yield
    finally: _clock = previous


def now() -> float:
    "The current reading of the clock `clock` selected (wall by default)."
    return _clock()


def busy_warning(clock_kind: str) -> str:
    "A warning when other work keeps the CPUs busy (1-minute load average at least half the cores), else ''."
    load, cores = load_average(), os.cpu_count() or 1
    if load is None or load[0] < cores / 2: return ''
    return (f'warning: load average {load[0]} on {cores} cores: other jobs are probably running, so timings are '
            f'noisy' + (' and inflated (try --threads 1 --clock cpu)' if clock_kind == 'wall' else ''))
