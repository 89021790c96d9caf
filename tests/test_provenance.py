"""`incres.provenance.machine_record`: what a result file records about the machine and the software, with no host
name; the benchmarks' `machine` record is built from it and keeps its earlier keys."""
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from incres import provenance
from incres.provenance import cpu_info, machine_record

ROOT = Path(__file__).resolve().parents[1]


def test_record_says_what_the_numbers_depend_on():
    rec = machine_record('cpu', 'fp32')
    assert {'cpu', 'cpu_flags', 'torch', 'onednn', 'torch_cpu_capability', 'torch_threads', 'device', 'gpu',
            'precision', 'python', 'date', 'lock_sha256'} <= set(rec)
    assert rec['cpu'] == cpu_info()[0] and set(rec['cpu_flags']) <= set(provenance.CPU_FLAGS)
    assert (rec['torch'], rec['python']) == (torch.__version__, platform.python_version())
    assert (rec['device'], rec['precision'], rec['gpu']) == ('cpu', 'fp32', None)
    if torch.backends.mkldnn.is_available(): assert rec['onednn'].count('.') >= 1
    date = datetime.datetime.fromisoformat(rec['date'])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 60
    json.dumps(rec)  # it goes into JSON files as it is


def test_no_host_name():
    text = json.dumps(machine_record('cpu', torch.bfloat16))
    for name in {platform.node(), socket.gethostname(), socket.getfqdn()} - {'', 'localhost'}:
        assert name not in text


def test_threads_device_and_precision_follow_the_caller():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert machine_record()['torch_threads'] == 2
    finally:
        torch.set_num_threads(threads)
    rec = machine_record(torch.device('cpu'), torch.bfloat16)
    assert (rec['device'], rec['precision']) == ('cpu', 'bfloat16')
    assert (machine_record()['device'], machine_record()['precision']) == (None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_gpu_name_on_cuda():
    rec = machine_record('cuda', 'bf16-autocast')
    assert rec['gpu'] == torch.cuda.get_device_name(0) and rec['device'] == 'cuda' and rec['cuda'] == torch.version.cuda


def test_lock_checksum_in_a_checkout():
    assert provenance.repo_root() == ROOT
    rec = machine_record()
    assert rec['lock_sha256'] == hashlib.sha256((ROOT/'requirements.lock').read_bytes()).hexdigest()
    assert isinstance(rec['lock_mismatches'], list)


def test_installed_copy_has_no_lock(tmp_path):
    "incres imported from a folder without settings.ini (as from site-packages): no lock, no checksum."
    shutil.copytree(ROOT/'incres', tmp_path/'site'/'incres', ignore=shutil.ignore_patterns('__pycache__'))
    code = ('import json, incres, incres.provenance as p; '
            'print(json.dumps([incres.__file__, p.machine_record()["lock_sha256"], p.lock_mismatches()]))')
    env = {**os.environ, 'PYTHONPATH': str(tmp_path/'site'), 'OMP_NUM_THREADS': '1'}
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, sha, mismatches = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(tmp_path) and sha is None and mismatches is None


def test_cpu_without_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, 'processor', lambda: 'Some CPU')
    assert cpu_info(tmp_path/'missing') == ('Some CPU', [])


def test_benchmark_results_keep_their_machine_keys(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT/'benchmarks'))
    import _common
    path = _common.write_results('probe', {'x': 1}, results_dir=tmp_path, device='cpu', precision='fp32')
    result = json.loads(path.read_text())
    machine = result['machine']
    # read by nbs/23_performance.ipynb and tests/test_benchmarks.py
    assert {'platform', 'cpu', 'cpu_count', 'python', 'torch', 'torch_threads', 'date', 'command',
            'load_average'} <= set(machine)
    assert machine['cpu_flags'] == cpu_info()[1] and machine['lock_sha256'] and result['x'] == 1
    assert (machine['device'], machine['precision']) == ('cpu', 'fp32')
