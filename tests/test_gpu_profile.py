"""The `gpu` profile (params.yaml's profiles.gpu, run by `make repro-gpu` = `dvc repro benchmarks/gpu/dvc.yaml`)
cannot rot
without a GPU: its parameters derive, every run configuration resolves, the pipeline file reads them, its time estimate
stays inside the budget, and its runs train on the CPU with the profile's settings at smoke size."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from incres.compute import native_bf16
from incres.pipeline import experiment_runs, load_params
from incres.strategies import merge
from incres.train import run

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location('derive_params', ROOT/'benchmarks'/'gpu'/'derive_params.py')
derive_params = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(derive_params)

BUDGET_SECONDS = 8 * 60
FIXED_SECONDS = 150  # notebook kernels starting torch and CUDA, the figures notebook, mfu.py (params.yaml's estimate)
SLOW_IMAGES_PER_SECOND = 12_500  # half the low end of the estimate (25-40k images/s of ResNet-56 on an H100)


@pytest.fixture(scope='module')
def params() -> dict:
    return yaml.safe_load((ROOT/'params.yaml').read_text())


@pytest.fixture(scope='module')
def gpu(params) -> dict:
    return derive_params.derive(params, 'gpu')


@pytest.fixture(scope='module')
def runs(gpu) -> list:
    return derive_params.run_configs(gpu)


def test_the_profile_is_resnet56_on_all_of_cifar10_for_e2e_and_two_growth_recipes(params, gpu, runs):
    assert params['profile'] == 'quick'  # the main pipeline's profile is not switched
    assert gpu['profile'] == 'gpu' and gpu['datasets'] == ['cifar10'] and gpu['profiles']['gpu']['seeds'] == [0]
    assert 'grid' not in gpu['profiles']['gpu'] and 'strategy' not in gpu['profiles']['gpu']
    assert [r['strategy'] for r in runs] == gpu['strategies'] and gpu['strategies'][0] == 'e2e'
    growth = {r['strategy']: r['config']['strategy'] for r in runs if r['strategy'] != 'e2e'}
    assert 2 <= len(growth) <= 3
    assert {s['init'] for s in growth.values()} == {'zero', 'copy'}
    assert all(s['name'] == 'incremental' and s['lr_at_growth'] == 'hold' for s in growth.values())
    for r in runs:
        cfg, plans = r['config'], r['plans']
        ds, t = cfg['dataset'], cfg['train']
        assert (ds['subset'], ds['val_size'], ds['test_subset']) == (None, 5000, None)
        assert list(plans[-1].stage_depths) == [9, 9, 9] and cfg['model']['depth'] == 56
        assert t['amp_bf16'] == 'auto' and t['channels_last'] and not t['compile'] and t['device'] == 'auto'
        assert t['log_every'] >= (45_000 // ds['batch_size'])  # no finiteness check (a host sync) inside an epoch
        assert cfg['optim']['lr'] == pytest.approx(0.1 * ds['batch_size'] / 128)  # the linear scaling rule
        if r['strategy'] != 'e2e': assert [p.stage_depths[0] for p in plans] == [1, 5, 9]


def test_the_profile_fits_its_time_budget(runs):
    "At half the low end of the images/s estimate, training and evaluation plus the fixed costs stay within 8 minutes."
    rows = derive_params.estimate(runs, SLOW_IMAGES_PER_SECOND)
    assert rows[0]['flops_ratio'] == pytest.approx(1.0)
    assert all(r['flops_ratio'] < 0.8 for r in rows[1:])  # growth saves compute
    assert sum(r['seconds'] for r in rows) + FIXED_SECONDS <= BUDGET_SECONDS


def test_derive_writes_what_the_notebooks_read(tmp_path, params):
    out = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'gpu'/'derive_params.py'), str(ROOT/'params.yaml'),
                          str(tmp_path/'params.resolved.yaml')], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'min of training and evaluation at 25,000 images/s' in out.stderr
    derived = load_params(tmp_path/'params.resolved.yaml')
    assert derived == derive_params.derive(params)
    assert experiment_runs(derived, 'cifar10', 'copy_hold')[0]['config']['strategy']['init'] == 'copy'


def test_derive_refuses_a_bad_grid(params):
    bad = merge(params, {'profiles': {'gpu': {'grid': {'strategies': ['e2e', 'nope']}}}})
    with pytest.raises(ValueError, match=r"names \['nope'\], defined neither"):
        derive_params.derive(bad)
    clash = merge(params, {'profiles': {'gpu': {'strategy': {'zero': {'name': 'incremental'}}}}})
    with pytest.raises(ValueError, match=r"redefines \['zero'\]"):
        derive_params.derive(clash)
    with pytest.raises(ValueError, match="no profile 'tpu'"):
        derive_params.derive(params, 'tpu')


def test_the_gpu_pipeline_runs_every_cell_of_the_grid(gpu):
    pipeline = yaml.safe_load((ROOT/'benchmarks'/'gpu'/'dvc.yaml').read_text())
    assert pipeline['vars'] == ['../../params.yaml']
    stage = pipeline['stages']['run']
    assert stage['matrix'] == {'dataset': '${profiles.gpu.grid.datasets}',
                               'strategy': '${profiles.gpu.grid.strategies}'}
    assert '-p params_path ../benchmarks/gpu/params.resolved.yaml' in stage['cmd']
    out = subprocess.run([sys.executable, '-m', 'dvc', 'stage', 'list', 'benchmarks/gpu/dvc.yaml'], cwd=ROOT,
                         capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    cells = [f'benchmarks/gpu/dvc.yaml:run@{d}-{s}' for d in gpu['datasets'] for s in gpu['strategies']]
    pipeline = 'benchmarks/gpu/dvc.yaml'
    assert names == ([f'{pipeline}:derive'] + cells + [f'{pipeline}:figures@{d}' for d in gpu['datasets']]
                     + ['benchmarks/gpu/dvc.yaml:mfu'])


# the profile's runs at smoke size: synthetic 16x16 images, width 4, a few epochs; every other setting the profile's
SMOKE = {'dataset': {'name': 'synthetic', 'val_size': 64, 'batch_size': 64, 'eval_batch_size': 256},
         'model': {'width': 4}, 'train': {'device': 'cpu', 'save_model': False}}


@pytest.mark.parametrize('strategy, overrides, depth, growths', [
    ('e2e', {'model': {'depth': 8}, 'train': {'epochs': 2}}, 8, 0),
    # ResNet-8 -> 32 -> 56 as in the profile, growing after epochs 1 and 2 of 4 (hold: the final net needs 40 %)
    ('copy_hold', {'train': {'epochs': 4}, 'strategy': {'grow_epochs': [1, 2]}}, 56, 2),
])
def test_a_run_of_the_profile_trains_on_the_cpu(tmp_path, gpu, strategy, overrides, depth, growths):
    config = experiment_runs(gpu, 'cifar10', strategy)[0]['config']
    config = merge(merge(config, SMOKE), overrides)
    profile = gpu['profiles']['gpu']['common']
    assert config['optim'] == profile['optim'] and config['train']['log_every'] == profile['train']['log_every']
    m = run(config, tmp_path/strategy)
    assert m['amp_bf16'] == native_bf16('cpu') and m['device'] == 'cpu'
    assert m['depth'] == depth and m['growth_events'] == growths and m['epochs'] == config['train']['epochs']
    assert m['images_per_second'] > 0 and m['flops_per_second'] > 0 and 0 <= m['test_acc'] <= 1
    assert (tmp_path/strategy/'metrics.json').exists()
