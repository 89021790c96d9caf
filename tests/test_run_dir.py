"""The run directory under faults and bad input: one run per directory (the lock), no silent overwrite, complete logs
after any kill, and every failure a user can cause as one line that names the fix, before any data is loaded."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import incres.data
import incres.io
from incres.checkpoint import RunLock
from incres.cli import main
from incres.strategies import merge
from incres.testing import TINY, without_clock, write_config
from incres.train import run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


def one_line_error(capsys) -> str:
    "The stderr of a failed command: exactly one line, no traceback."
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in lines[0], lines
    return lines[0]


@pytest.fixture
def no_data_loading(monkeypatch):
    "Fail the test if the engine loads data: the error must come before."
    def refuse(*args, **kwargs): raise AssertionError('data was loaded before the error')
    monkeypatch.setattr(incres.data, 'make_loaders', refuse)


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path/'c.yaml', TINY)


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_process(tmp_path, config, capsys):
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time\nfrom incres.checkpoint import RunLock\n'
                               f'RunLock({str(tmp_path/"run")!r}).acquire(); print("locked", flush=True); '
                               'time.sleep(600)'],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == 'locked'  # synchronised on its output, not on time
        assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 1
        line = one_line_error(capsys)
        assert f'is in use by process {holder.pid}' in line and 'choose another --out' in line, line
    finally:
        holder.kill(); holder.wait()
    # the holder was killed: its lock is taken over, and the run goes ahead
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 0
    assert f'locked by process {holder.pid}, which is no longer running' in capsys.readouterr().err
    assert not (tmp_path/'run'/'.lock').exists()  # released: a run directory at rest holds no lock
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 0  # finished: read back, no note
    assert 'note' not in capsys.readouterr().err


def test_overwrite_never_deletes_files_that_are_not_an_incres_run(tmp_path, capsys):
    (tmp_path/'config.yaml').write_text(__import__('yaml').safe_dump(TINY))  # the user's own config, in --out
    argv = ['train', str(tmp_path/'config.yaml'), '--out', str(tmp_path)]
    for extra in ([], ['--overwrite']):
        assert main(argv + extra) == 2
        assert 'holds config.yaml but no incres config.yaml that says which run' in one_line_error(capsys)
        assert (tmp_path/'config.yaml').exists()


def test_a_run_that_fails_its_checks_leaves_the_previous_run_alone(tmp_path, config, capsys):
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path/'run').iterdir() if p.is_file()}
    argv = ['train', str(config), '--out', str(tmp_path/'run'), '--overwrite', '--set', 'strategy.name=greedy',
            '--set', 'train.epochs=6', '--set', 'compute.memory_budget_gb=1e-6', '--set', 'dataset.augment=false']
    assert main(argv) == 2
    assert 'more than the memory budget' in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in (tmp_path/'run').iterdir() if p.is_file()} == before


@pytest.mark.parametrize('state', ['finished', 'partial', 'finished-no-checkpoint', 'partial-no-checkpoint'])
def test_a_directory_holding_another_configuration_is_refused(tmp_path, config, capsys, state):
    cfg = merge(TINY, {'train': {'epochs': 3}})
    if state.startswith('partial'): cfg = merge(cfg, {'train': {'interrupt_after_epoch': 2}})
    try: run(cfg, tmp_path/'run')
    except KeyboardInterrupt: pass
    if state.endswith('no-checkpoint'): import shutil; shutil.rmtree(tmp_path/'run'/'checkpoint')
    before = {p.name: p.read_bytes() for p in (tmp_path/'run').glob('*.*') if not p.name.startswith('.')}
    argv = ['train', str(config), '--out', str(tmp_path/'run'), '--set', 'optim.lr=0.01', '--set', 'train.epochs=3']
    assert main(argv) == 2
    line = one_line_error(capsys)
    assert 'holds a run with a different configuration (optim.lr: 0.05 -> 0.01)' in line, line
    assert 'choose another --out, or pass --overwrite' in line
    # nothing was touched
    assert {p.name: p.read_bytes() for p in (tmp_path/'run').glob('*.*') if not p.name.startswith('.')} == before
    assert main(argv + ['--overwrite']) == 0
    assert (tmp_path/'run'/'metrics.json').exists() and len(pd.read_csv(tmp_path/'run'/'history.csv')) == 3


def test_a_changed_epoch_count_names_that_key_only(tmp_path, config, capsys):
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 0
    capsys.readouterr()
    assert main(['train', str(config), '--out', str(tmp_path/'run'), '--set', 'train.epochs=5']) == 2
    line = one_line_error(capsys)
    assert '(train.epochs: 4 -> 5)' in line and 'phases' not in line and len(line) < 300, line


def test_logs_and_model_are_completed_from_a_finished_checkpoint(tmp_path):
    "A kill while the last epoch wrote its logs, or a deleted model.pt: running again completes them."
    m = run(TINY, tmp_path/'run')
    files = {n: (tmp_path/'run'/n).read_bytes() for n in ('history.csv', 'steps.csv', 'events.jsonl')}
    model = torch.load(tmp_path/'run'/'model.pt', weights_only=True)['state_dict']
    (tmp_path/'run'/'history.csv').write_text(''.join(files['history.csv'].decode().splitlines(True)[:3]))
    (tmp_path/'run'/'steps.csv').unlink()
    (tmp_path/'run'/'model.pt').unlink()
    (tmp_path/'run'/'metrics.json').unlink()
    assert without_clock(run(TINY, tmp_path/'run')) == without_clock(m)
    assert {n: (tmp_path/'run'/n).read_bytes() for n in files} == files
    restored = torch.load(tmp_path/'run'/'model.pt', weights_only=True)['state_dict']
    assert all(torch.equal(restored[k], v) for k, v in model.items())


@pytest.mark.parametrize('content, message', [
    (b'', 'it is empty'), ('half', 'it is truncated or not a checkpoint'),
    (bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist()),
     'it is truncated or not a checkpoint')])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, config, capsys, no_data_loading, content, message):
    ckpt = tmp_path/'run'/'checkpoint'/'last.pt'
    ckpt.parent.mkdir(parents=True)
    if content == 'half':
        torch.save({'x': torch.zeros(1000)}, ckpt); content = ckpt.read_bytes()[:700]
    ckpt.write_bytes(content)
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 2
    line = one_line_error(capsys)
    assert f'cannot resume from {ckpt}: {message}' in line and 'pass --overwrite to start the run over' in line, line


def test_an_out_dir_that_is_a_file_is_refused_before_the_data_loads(tmp_path, config, capsys, no_data_loading):
    (tmp_path/'file').write_text('x')
    assert main(['train', str(config), '--out', str(tmp_path/'file')]) == 2
    assert 'is a file, not a folder: choose another --out' in one_line_error(capsys)


def test_an_unwritable_out_dir_is_refused_before_the_data_loads(tmp_path, config, capsys, no_data_loading, monkeypatch):
    def read_only(*args): raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(incres.io.os, 'replace', read_only)  # as root, chmod cannot make a folder read-only
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 2
    line = one_line_error(capsys)
    assert 'the file system is read-only: write somewhere else' in line, line
    assert not list((tmp_path/'run').glob('.*.tmp*'))  # the probe's temporary file was removed


def test_a_full_disk_is_refused_before_the_data_loads(tmp_path, config, capsys, no_data_loading, monkeypatch):
    monkeypatch.setattr(incres.io.shutil, 'disk_usage', lambda p: type('Usage', (), {'free': 1000})())
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 2
    assert 'MiB are needed: free some space or choose another --out' in one_line_error(capsys)


def test_a_disk_filling_up_during_the_run_leaves_no_temporary_file(tmp_path, config, capsys, monkeypatch):
    real_fsync = os.fsync
    def fill_up(fd):
        if os.fstat(fd).st_size > 50_000: raise OSError(errno.ENOSPC, 'No space left on device')  # the checkpoint
        real_fsync(fd)
    monkeypatch.setattr(incres.io.os, 'fsync', fill_up)
    assert main(['train', str(config), '--out', str(tmp_path/'run')]) == 2
    line = one_line_error(capsys)
    assert 'last.pt: the disk is full: free some space or write somewhere else' in line, line
    assert not [p for p in (tmp_path/'run').rglob('*') if '.tmp' in p.name]


def test_resume_refuses_changed_data(tmp_path, capsys, monkeypatch):
    cfg = merge(TINY, {'train': {'interrupt_after_epoch': 1}})
    with pytest.raises(KeyboardInterrupt): run(cfg, tmp_path/'run')
    monkeypatch.setattr('incres.train.data_fingerprint', lambda name, root: 'prepared-again')
    with pytest.raises(ValueError, match=r'the data of synthetic changed since .*last.pt was written'):
        run(TINY, tmp_path/'run')


def test_resume_refuses_another_number_of_processes(tmp_path):
    cfg = merge(TINY, {'train': {'interrupt_after_epoch': 1}})
    with pytest.raises(KeyboardInterrupt): run(cfg, tmp_path/'run')
    ckpt = tmp_path/'run'/'checkpoint'/'last.pt'
    blob = torch.load(ckpt, weights_only=False); blob['world_size'] = 2; torch.save(blob, ckpt)
    with pytest.raises(ValueError, match=r'written by 2 process\(es\) but this run has 1: resume with 2'):
        run(TINY, tmp_path/'run')


DDP_SCRIPT = '''
import os, sys
from pathlib import Path
from incres.train import Trainer
Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
(Path(sys.argv[2])/f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
Trainer(sys.argv[1], sys.argv[2]).fit()
'''


def test_torchrun_workers_stop_when_their_launcher_is_killed(tmp_path):
    cfg = write_config(tmp_path/'c.yaml', merge(TINY, {'train': {'epochs': 10_000}}))  # would take hours
    script = tmp_path/'ddp.py'
    script.write_text(DDP_SCRIPT)
    out = tmp_path/'ddp'
    launcher = subprocess.Popen([str(BIN/'torchrun'), '--standalone', '--nproc_per_node', '2', str(script), str(cfg),
                                 str(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240  # only a limit for a broken run: the test waits on files, not on time
    while not (out/'checkpoint'/'last.pt').exists():
        assert launcher.poll() is None and time.time() < deadline, 'the run did not start'
        time.sleep(0.1)
    workers = [int((out/f'pid{r}').read_text()) for r in (0, 1)]
    launcher.kill(); launcher.wait()
    def alive(pid):
        try: os.kill(pid, 0); return not Path(f'/proc/{pid}/stat').read_text().split()[2] == 'Z'
        except (ProcessLookupError, FileNotFoundError): return False
    while any(alive(p) for p in workers):
        assert time.time() < deadline, f'orphaned workers {workers} kept running'
        time.sleep(0.1)
    assert RunLock(out).acquire()  # and the directory is free again


def test_an_interrupted_torchrun_says_so_once(tmp_path):
    cfg = write_config(tmp_path/'c.yaml', merge(TINY, {'train': {'epochs': 10_000}}))
    out = tmp_path/'ddp'
    launcher = subprocess.Popen([str(BIN/'torchrun'), '--standalone', '--nproc_per_node', '2', '-m', 'incres', 'train',
                                 str(cfg), '--out', str(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240  # only a limit for a broken run: the test waits on files, not on time
    while not (out/'checkpoint'/'last.pt').exists():
        assert launcher.poll() is None and time.time() < deadline, 'the run did not start'
        time.sleep(0.1)
    launcher.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
    _, err = launcher.communicate(timeout=240)
    assert launcher.returncode != 0
    assert err.count('incres train: interrupted; the checkpoint of the last completed epoch is in') == 1, err
