"""The benchmark scripts run end to end (smoke sizes) and their results say what the performance notebook reads.

The numbers they produce are not asserted: timings belong in benchmarks/results, not in tests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'compute_to_accuracy.py'


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_compute_to_accuracy_smoke(tmp_path):
    out = run_script('--regime', 'smoke', '--seeds', '0', '1', '--budget', '0.9', '--threads', '1',
                     '--work-dir', str(tmp_path / 'runs'), '--results-dir', str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / 'compute_to_accuracy-smoke.json').read_text())
    assert result['machine']['command'].endswith('--results-dir ' + str(tmp_path))
    # the schedule was chosen on validation accuracy, among the candidates within the FLOPs budget
    within = [r for r in result['selection'][1:] if r['flops_ratio'] <= 0.9]
    assert result['selected'] == max(within, key=lambda r: r['val_acc'])['schedule']
    summary = {r['strategy']: r for r in result['summary']}
    assert set(summary) == {'e2e', 'zero', 'greedy', f"selected ({result['selected']})"}
    assert summary['e2e']['total_flops_ratio'] == 1.0 and summary['e2e']['reached'] == 2
    assert all(r['seeds'] == 2 for r in summary.values())
    # a grown network costs less than the final one trained from scratch, at the same final depth
    assert summary['zero']['total_flops_ratio'] < 1 and summary['zero']['final_depth'] == summary['e2e']['final_depth']
    assert {c['seed'] for c in result['curves']} == {0, 1}
    assert out.stdout.strip().splitlines()[-1].startswith('key ratio: ')
    # finished runs are read back, not re-trained: a second invocation gives identical numbers
    again = run_script('--regime', 'smoke', '--seeds', '0', '1', '--budget', '0.9', '--threads', '1',
                       '--work-dir', str(tmp_path / 'runs'), '--results-dir', str(tmp_path / 'again'))
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / 'again' / 'compute_to_accuracy-smoke.json').read_text())
    assert second['per_seed'] == result['per_seed']


@pytest.mark.parametrize('args, message', [
    (['--strategies', 'zero'], 'must include e2e'),
    (['--strategies', 'e2e', 'nope'], "unknown strategies ['nope']"),
    (['--selected', 'zero-99'], 'is not a candidate'),
])
def test_compute_to_accuracy_bad_input_fails_before_training(tmp_path, args, message):
    out = run_script('--regime', 'smoke', '--work-dir', str(tmp_path / 'runs'), '--results-dir', str(tmp_path), *args)
    assert out.returncode == 2 and message in out.stderr
    assert not (tmp_path / 'runs').exists()
