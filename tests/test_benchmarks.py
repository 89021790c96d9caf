"""The benchmark scripts run end to end (smoke sizes) and their results say what the performance notebook reads.

The numbers they produce are not asserted: timings belong in benchmarks/results, not in tests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


FRONTIER = ROOT / 'benchmarks' / 'frontier.py'
# benchmarks/frontier.py at smoke size: synthetic data, ResNet-14 of width 4, B = 2 epochs, two seeds
SMOKE_FRONTIER = {'frontier': {
    'budget_epochs': 2, 'fractions': [0.5, 1.0], 'schedules': ['linear', 'cosine'], 'shallow_depths': [8],
    'seeds': [0, 1], 'seed_budgets': [0.5, 1.0], 'select_seed': 100, 'select_lrs': [0.05, 0.1], 'parity_fraction': 0.5,
    'common': {'dataset': {'name': 'synthetic', 'batch_size': 64, 'val_size': 64, 'eval_batch_size': 256},
               'model': {'depth': 14, 'width': 4}, 'optim': {'lr': 0.1, 'schedule': 'linear', 'warmup_epochs': 0.5},
               'train': {'amp_bf16': 'auto', 'progress': False, 'save_model': False}},
    'measure_top': 1, 'preregistered': ['copy-auto'],
    'recipes': {'zero-hold': {'strategy': {'name': 'incremental', 'grow_epochs': [1], 'lr_at_growth': 'hold'}},
                'copy-auto': {'strategy': {'name': 'incremental', 'init': 'copy', 'grow_epochs': [1],
                                           'lr_at_growth': 'hold', 'grow_when': {'threshold': 0.1}}},
                'copy-to20': {'model': {'depth': 20}, 'train': {'epochs': 3},
                              'strategy': {'name': 'incremental', 'init': 'copy', 'grow_epochs': [1, 2]}}}}}


def run_frontier(tmp_path, params: dict, *args):
    (tmp_path / 'params.yaml').write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(FRONTIER), '--params', str(tmp_path / 'params.yaml'), '--threads', '1',
                           '--summary-dir', str(tmp_path / 'summaries'), '--work-dir', str(tmp_path / 'work'),
                           '--results-dir', str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_frontier_smoke(tmp_path):
    out = run_frontier(tmp_path, SMOKE_FRONTIER)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / 'frontier.json').read_text())
    for key in ('train_images', 'budget_epochs', 'e2e', 'growth', 'verdict', 'machine'):
        assert key in result, key
    assert (result['train_images'], result['budget_epochs']) == (512 - 64, 2)
    # the peak rate is the best on validation among the grid (linear), then the schedule at that rate
    sel = result['selection']
    linear = [r for r in sel['runs'] if r['schedule'] == 'linear']
    assert sel['lr'] == max(linear, key=lambda r: (r['val_acc'], -r['val_loss']))['lr']
    # every budget on every seed, ResNet-8 at B, the other schedule on the first seed
    e2e = {(r['depth'], r['epochs'], r['schedule'], r['seed']) for r in result['e2e']}
    main = sel['schedule']
    other = 'cosine' if main == 'linear' else 'linear'
    assert {(14, e, main, s) for e in (1, 2) for s in (0, 1)} <= e2e and (8, 2, main, 0) in e2e
    assert {(14, e, other, 0) for e in (1, 2)} <= e2e
    for row in result['e2e'] + result['growth']:
        assert set(row) >= {'seed', 'train_flops', 'train_seconds', 'test_acc', 'val_acc'}
    # the frontier is the upper envelope: FLOPs and accuracy both increase along it
    front = result['frontier']
    assert all(a['train_flops'] < b['train_flops'] and a['test_acc'] < b['test_acc'] for a, b in zip(front, front[1:]))
    # the preregistered and the best recipe on validation on every seed, the others on the first, each run once; a
    # deeper final network for copy-to20
    top = result['recipe_selection']['measured_on_every_seed']
    growth = {(r['recipe'], r['seed']): r for r in result['growth']}
    every_seed = {top[0], 'copy-auto'}
    expected = {(r, s) for r in every_seed for s in (0, 1)} | {(r, 0) for r in SMOKE_FRONTIER['frontier']['recipes']}
    assert len(top) == 1 and set(growth) == expected and len(result['growth']) == len(growth)
    assert growth[('copy-to20', 0)]['final_depth'] == 20 and growth[('zero-hold', 0)]['final_depth'] == 14
    assert result['parity']['seeds'] == [0, 1] and result['verdict']['recipe'] in SMOKE_FRONTIER['frontier']['recipes']
    assert result['verdict']['met'] in (True, False)
    # finished runs are read back, not retrained
    again = run_frontier(tmp_path, SMOKE_FRONTIER, '--report')
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / 'frontier.json').read_text())
    assert second['e2e'] == result['e2e'] and second['growth'] == result['growth']
    assert second['runs_trained_by_this_command'] == []


def test_frontier_refuses_a_changed_configuration_and_bad_recipes(tmp_path):
    small = yaml.safe_load(yaml.safe_dump(SMOKE_FRONTIER))
    small['frontier']['select_lrs'] = [0.05]
    small['frontier']['recipes'], small['frontier']['preregistered'] = {}, []
    assert run_frontier(tmp_path, small, '--only', 'select').returncode == 0
    changed = yaml.safe_load(yaml.safe_dump(small))
    changed['frontier']['common']['optim']['weight_decay'] = 0.01
    out = run_frontier(tmp_path, changed, '--only', 'select')
    assert out.returncode == 1 and 'holds a run with another configuration' in out.stderr
    bad = yaml.safe_load(yaml.safe_dump(small))
    bad['frontier']['recipes'] = {'nope': {'strategy': {'name': 'incremental', 'init': 'zeros'}}}
    out = run_frontier(tmp_path, bad)
    assert out.returncode == 2 and "frontier.recipes.nope: strategy.init must be one of" in out.stderr
    unknown = yaml.safe_load(yaml.safe_dump(SMOKE_FRONTIER))
    unknown['frontier']['preregistered'] = ['copy-hold']
    out = run_frontier(tmp_path, unknown)
    assert out.returncode == 2 and 'frontier.preregistered: copy-hold not in frontier.recipes' in out.stderr


# ---- bf16.py (bf16 on the CPU as a lever) and mfu.py's bf16 / GPU-pipeline options (issue 16) ----
BENCHMARKS = ROOT / 'benchmarks'


def benchmark_module(name: str):
    "A script of benchmarks/ imported as a module (its folder first on sys.path, as when it runs)."
    if str(BENCHMARKS) not in sys.path: sys.path.insert(0, str(BENCHMARKS))
    import importlib
    return importlib.import_module(name)


def test_bf16_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(BENCHMARKS / 'bf16.py'), '--smoke', '--optimizers', '--compile',
                          '--compile-backend', 'eager', '--results-dir', str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / 'bf16-smoke.json').read_text())
    assert r['machine']['command'].endswith('--results-dir ' + str(tmp_path))
    theory = r['theoretical_peak']
    assert theory['cores'] >= 1 and theory['clock_source'] and theory['flop_per_cycle_per_core']['fp32'] > 0
    peaks = r['matmul_peak']['peak']
    assert {p: peaks[p]['precision'] for p in ('fp32', 'bf16')} == {'fp32': 'fp32', 'bf16': 'bf16'}
    # the peak is the best of every size, thread count and both sweeps
    sweep = r['matmul_peak']['before']['by'] + r['matmul_peak']['after']['by']
    assert peaks['fp32']['flops_per_second'] == max(x['flops_per_second'] for x in sweep if x['precision'] == 'fp32')
    steps = {(s['depth'], s['precision'], s['lever']): s for s in r['steps']}
    levers = ('eager', 'compiled', 'foreach', 'fused')
    assert set(steps) == {(8, p, lever) for p in ('fp32', 'bf16') for lever in levers}
    for s in r['steps']:
        if 'error' in s: continue  # a lever this torch lacks on the CPU is recorded, not fatal
        assert s['rounds'] == 2 and 0 < s['mfu'] <= 1
        assert s['mfu'] == pytest.approx(s['achieved_flops_per_second'] / peaks[s['precision']]['flops_per_second'])
    assert steps[(8, 'bf16', 'eager')]['flops_per_image'] == steps[(8, 'fp32', 'eager')]['flops_per_image']
    assert any(s['lever'] == 'bf16 autocast / fp32' and s['speedup'] > 0 for s in r['speedups'])
    assert r['errors'] == []
    assert out.stdout.strip().splitlines()[-1].startswith('bf16/fp32 ResNet-8: ')


def test_bf16_theoretical_peak_and_the_mfu_check():
    bf16 = benchmark_module('bf16')
    avx512 = {'avx512f', 'avx2', 'fma', 'avx512_bf16'}
    assert {k: bf16.flop_per_cycle(avx512)[k] for k in ('fp32', 'bf16')} == {'fp32': 64, 'bf16': 128}
    zen4 = bf16.flop_per_cycle(avx512, 'AuthenticAMD', 25)  # 512-bit operations in two 256-bit halves
    assert (zen4['fp32'], zen4['bf16'], zen4['datapath_bits']) == (32, 64, 256)
    assert {k: bf16.flop_per_cycle({'avx2', 'fma'})[k] for k in ('fp32', 'bf16')} == {'fp32': 32, 'bf16': 32}
    assert bf16.flop_per_cycle(avx512 | {'amx_bf16'})['bf16'] == 1024
    # an MFU above 1 against the measured peak is a bug of the benchmark: reported as an error
    rows = [{'label': 'ResNet-20 bf16', 'precision': 'bf16', 'mfu': 1.2},
            {'label': 'ResNet-20 fp32', 'precision': 'fp32', 'mfu': 0.5}]
    errors = bf16.mfu_errors(rows)
    assert len(errors) == 1 and errors[0].startswith('ResNet-20 bf16 reaches 1.20') and 'bug' in errors[0]
    # without native bf16, autocast computes in fp32: the bf16 bound is the fp32 matmul peak, not the slow bf16 matmul
    peak = lambda p, f: {'precision': p, 'threads': 1, 'n': 1024, 'flops_per_second': f}
    peaks = {'fp32': peak('fp32', 80e9), 'bf16': peak('bf16', 3e9)}
    avx2 = {'flop_per_cycle_per_core': bf16.flop_per_cycle({'avx2', 'fma'})}
    bound = bf16.bound_peaks(peaks, avx2)
    assert bound['bf16']['flops_per_second'] == 80e9 and bound['bf16']['measured_bf16_matmul'] == peaks['bf16']
    assert bf16.bound_peaks(peaks, {'flop_per_cycle_per_core': bf16.flop_per_cycle(avx512)}) == peaks  # native
    saved = {'theoretical_peak': avx2, 'matmul_peak': {'peak': peaks},
             'steps': [{'label': 'ResNet-20 bf16', 'precision': 'bf16', 'achieved_flops_per_second': 7e9}]}
    again = bf16.rescore(saved)
    assert again['errors'] == [] and again['steps'][0]['mfu'] == 7e9 / 80e9


def fake_run(root, strategy: str, train_flops: float, train_seconds: float):
    run_dir = root / 'cifar10' / strategy / 'logs' / 'seed0'
    run_dir.mkdir(parents=True)
    (run_dir / 'metrics.json').write_text(json.dumps({
        'device': 'cpu', 'amp_bf16': True, 'depth': 56, 'epochs': 3, 'test_acc': 0.5, 'train_flops': train_flops,
        'train_seconds': train_seconds, 'images_per_second': 100.0, 'flops_per_second': train_flops / train_seconds}))


def test_mfu_bf16_with_runs(tmp_path):
    fake_run(tmp_path / 'runs', 'e2e', 4e9, 2.0)
    fake_run(tmp_path / 'runs', 'copy_hold', 3e9, 1.6)
    args = [sys.executable, str(BENCHMARKS / 'mfu.py'), '--devices', 'cpu', '--precision', 'bf16', '--depths', '8',
            '--batch-size', '4', '--seconds', '0', '--min-steps', '1', '--matmul-sizes', '64', '128',
            '--matmul-seconds', '0.01', '--threads', '1', '--runs', str(tmp_path / 'runs'),
            '--results-dir', str(tmp_path), '--name', 'mfu-test']
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / 'mfu-test.json').read_text())
    peak = r['matmul_flops_per_second']['cpu']
    assert r['precision'] == peak['precision'] == 'bf16' and set(peak['before']['by_size']) == {'64', '128'}
    assert r['models'][0]['precision'] == 'bf16' and 0 < r['models'][0]['mfu'] <= 1
    runs = {x['strategy']: x for x in r['runs']}
    assert runs['copy_hold']['flops_ratio'] == pytest.approx(0.75)
    assert runs['copy_hold']['seconds_ratio'] == pytest.approx(0.8)
    assert runs['e2e']['mfu'] == pytest.approx(2e9 / peak['peak'])
    shown = subprocess.run([sys.executable, str(BENCHMARKS / 'mfu.py'), '--show', str(tmp_path / 'mfu-test.json')],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and '| cifar10/copy_hold/seed0 | cpu | True | 0.5000 |' in shown.stdout
