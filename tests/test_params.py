"""params.yaml: every strategy of the grid resolves in every profile; the widening strategies (widen-*) widen once, from
width 8 to the final width at the final depth, with the data, seeds and evaluation of every other strategy; and one of
them trains through the pipeline on synthetic data."""
import copy
import json
from pathlib import Path

import pytest

from incres.pipeline import SMOKE_PARAMS, experiment_runs, load_params, load_runs, run_experiment, widening_curves
from incres.strategies import final_stage_depths, merge, plan_phases, resolve_config, stage_widths

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / 'params.yaml')
PROFILES = list(PARAMS['profiles'])  # quick (the pipeline's), full (one GPU) and gpu's settings
WIDEN = [s for s in PARAMS['strategies'] if s.startswith('widen-')]


def runs(profile: str, dataset: str, strategy: str) -> list:
    return experiment_runs({**PARAMS, 'profile': profile}, dataset, strategy, data_root=ROOT / 'data')


@pytest.mark.parametrize('profile', PROFILES)
@pytest.mark.parametrize('dataset', PARAMS['datasets'])
def test_every_strategy_resolves_in_every_profile(profile, dataset):
    for strategy in PARAMS['strategies']:
        for run in runs(profile, dataset, strategy):
            cfg = resolve_config(run['config'])
            plan = plan_phases(cfg)
            assert plan[-1].end_epoch == cfg['train']['epochs'], (strategy, run['name'])


VARIANTS = {'widen-paired-vt': ('widen-paired', {'widen_variance_transfer': True, 'widen_lr_scale': 2.0})}


def test_the_widening_strategies_are_one_per_widen_init():
    from incres.growth import WIDEN_INITS
    inits = {s: PARAMS['strategy'][s]['widen_init'] for s in WIDEN if s not in VARIANTS}
    assert sorted(inits.values()) == sorted(WIDEN_INITS)
    assert all(s == 'widen-' + init.replace('_', '-') for s, init in inits.items())  # each key says what it is


@pytest.mark.parametrize('profile', PROFILES)
def test_a_variant_is_its_base_strategy_plus_its_widening_options(profile):
    "widen-paired-vt: widen-paired plus variance transfer and the new channels' learning-rate scale, nothing else."
    for variant, (base, options) in VARIANTS.items():
        assert PARAMS['strategy'][variant] == {**PARAMS['strategy'][base], **options}
        for run, reference in zip(runs(profile, 'cifar10', variant), runs(profile, 'cifar10', base), strict=True):
            cfg, ref = resolve_config(run['config']), resolve_config(reference['config'])
            assert {k: v for k, v in cfg['strategy'].items() if k not in options and k != 'phases'} \
                == {k: v for k, v in ref['strategy'].items() if k != 'phases'}
            widening = plan_phases(cfg)[1].settings
            assert {k: widening[k] for k in options} == options
    for strategy in WIDEN:  # the options are opt-in: the other strategies' configs do not mention them
        if strategy in VARIANTS: continue
        cfg = resolve_config(runs(profile, 'cifar10', strategy)[0]['config'])
        assert not any(k in cfg['strategy'] or k in ph for k in ('widen_variance_transfer', 'widen_lr_scale')
                       for ph in cfg['strategy']['phases'])


@pytest.mark.parametrize('profile', PROFILES)
@pytest.mark.parametrize('strategy', WIDEN)
def test_a_widening_strategy_widens_once_from_width_8_at_full_depth(profile, strategy):
    for run, reference in zip(runs(profile, 'cifar10', strategy), runs(profile, 'cifar10', 'e2e'), strict=True):
        cfg = resolve_config(run['config'])
        final, plan = tuple(final_stage_depths(cfg['model'])), plan_phases(cfg)
        widths = tuple(stage_widths(cfg['model']['width'], len(final)))
        assert widths == (16, 32, 64) and len(plan) == 2
        assert [p.stage_depths for p in plan] == [final, final] and not plan[1].inserts
        assert plan[0].widths == (8, 16, 32) and plan[1].widths == widths
        assert plan[1].widens == ((0, 16), (1, 32), (2, 64))
        assert plan[1].settings['widen_init'] == PARAMS['strategy'][strategy]['widen_init']
        assert plan[1].epochs >= 0.4 * cfg['train']['epochs']  # the student trains for most of the budget
        # the same data, seed and evaluation as the from-scratch network: only the strategy differs
        assert run['seed'] == reference['seed']
        assert ({k: v for k, v in run['config'].items() if k != 'strategy'}
                == {k: v for k, v in reference['config'].items() if k != 'strategy'})


def test_the_quick_profile_widens_at_epoch_4_of_9():
    for strategy in WIDEN:
        (run,) = runs('quick', 'cifar10', strategy)
        assert [(p.start_epoch, p.epochs) for p in plan_phases(resolve_config(run['config']))] == [(0, 4), (4, 5)]


def test_a_widening_strategy_through_the_pipeline(tmp_path):
    "widen-net2net-noise and e2e on synthetic data: one widening event, the e2e network at the end, for fewer FLOPs."
    params = copy.deepcopy(SMOKE_PARAMS)
    strategy = 'widen-net2net-noise'
    params['strategy'][strategy] = PARAMS['strategy'][strategy]
    params['strategies'] = ['e2e', strategy]
    profile = params['profiles']['smoke']
    profile['common'] = merge(profile['common'], {'model': {'depth': 8, 'width': 16}, 'train': {'epochs': 3}})
    for key in params['strategies']:
        run_experiment(params, 'synthetic', key, tmp_path / 'runs' / key, tmp_path / 'models' / key)
    metrics, history, events = load_runs(tmp_path / 'runs')
    m = metrics.set_index('strategy_key')
    assert m.loc[strategy, 'params'] == m.loc['e2e', 'params'] and m.loc[strategy, 'depth'] == m.loc['e2e', 'depth']
    assert m.loc[strategy, 'train_flops'] < m.loc['e2e', 'train_flops']
    (event,) = [e for e in events.to_dict('records') if e['strategy_key'] == strategy]
    assert event['epoch'] == 1 and event['widen_init'] == 'net2net_noise' and event['init'] is None
    assert event['ops'] == [f'widen(stage={s}, width={w}, init=net2net_noise)' for s, w in enumerate((16, 32, 64))]
    assert 0 < event['max_logit_change'] < 1  # the noise breaks the copies' symmetry: a small, non-zero gap
    assert list(history[history.strategy_key == strategy].widths) == ['8 16 32', '16 32 64', '16 32 64']
    curves = widening_curves(history, events, [strategy])
    assert list(curves[curves.strategy_key == strategy].part) == ['teacher', 'student', 'student']
    summary = json.loads((tmp_path / 'runs' / strategy / 'metrics.json').read_text())
    assert summary['strategy'] == strategy and summary['runs'] == 1


def test_the_variance_transfer_strategy_through_the_pipeline(tmp_path):
    "widen-paired-vt on synthetic data: the widening is near-exact (variance transfer is exact up to BN's eps)."
    params = copy.deepcopy(SMOKE_PARAMS)
    strategy = 'widen-paired-vt'
    params['strategy'][strategy] = PARAMS['strategy'][strategy]
    params['strategies'] = [strategy]
    profile = params['profiles']['smoke']
    profile['common'] = merge(profile['common'], {'model': {'depth': 8, 'width': 16}, 'train': {'epochs': 3}})
    run_experiment(params, 'synthetic', strategy, tmp_path / 'runs' / strategy, tmp_path / 'models' / strategy)
    metrics, history, events = load_runs(tmp_path / 'runs')
    (event,) = events.to_dict('records')
    assert event['widen_init'] == 'paired'
    assert event['ops'] == [f'widen(stage={s}, width={w}, init=paired, variance_transfer)'
                            for s, w in enumerate((16, 32, 64))]
    assert event['max_logit_change'] < 1e-2
    assert list(history.widths) == ['8 16 32', '16 32 64', '16 32 64']
