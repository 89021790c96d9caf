"""What every benchmark records next to its numbers: the machine, the software, the time and the command, so that a
result file can be read (and doubted) without knowing where it came from. Imported by the scripts in this folder."""
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / 'results'


def cpu_model() -> str:
    "The CPU's model name from /proc/cpuinfo (Linux), else whatever `platform` knows."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def load_average() -> list | None:
    "1, 5 and 15 minute load averages: on a shared machine they say how much the timings can be trusted."
    try: return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError): return None


def machine_info() -> dict:
    info = {'platform': platform.platform(), 'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
            'python': platform.python_version(), 'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'command': shlex.join(getattr(sys, 'orig_argv', [sys.executable] + sys.argv)),
            'load_average': load_average()}
    if hasattr(os, 'sched_getaffinity'): info['cpus_usable'] = len(os.sched_getaffinity(0))
    if torch.cuda.is_available():
        info['cuda_device'] = torch.cuda.get_device_name()
        info['cuda_tf32'] = {'matmul': torch.backends.cuda.matmul.allow_tf32, 'cudnn': torch.backends.cudnn.allow_tf32}
    return info


def write_results(name: str, results: dict) -> Path:
    "Write `results` plus `machine_info()` to benchmarks/results/<name>.json atomically (temp file, then os.replace)."
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f'{name}.json'
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(json.dumps({'machine': machine_info(), **results}, indent=2) + '\n')
    os.replace(tmp, path)  # a reader never sees half a file, and a crash leaves the previous result intact
    return path
