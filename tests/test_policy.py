"""Growth recipes of the engine on synthetic data (seconds): the automatic when-to-grow policy (grows early, never
late, resumes to the same plan), the held-peak learning rate across growth, the linear schedule, and their errors."""
import json

import pandas as pd
import pytest

from incres.cli import main
from incres.strategies import merge, resolve_config
from incres.testing import TINY, without_clock, write_config
from incres.train import run

# ResNet-8 -> ResNet-14 with the peak held until the final network; the planned growth (the deadline) is epoch 3
GROWING = merge(TINY, {'train': {'epochs': 6}, 'optim': {'schedule': 'linear'},
                       'strategy': {'name': 'incremental', 'grow_epochs': [3], 'lr_at_growth': 'hold'}})


def policy(threshold: float, metric: str = 'train_loss') -> dict:
    return merge(GROWING, {'strategy': {'grow_when': {'metric': metric, 'window': 1, 'threshold': threshold}}})


def grow_epochs(run_dir) -> list:
    return [json.loads(line)['epoch'] for line in (run_dir/'events.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('metric', ['train_loss', 'val_acc'])
def test_the_policy_grows_as_soon_as_it_may_when_nothing_is_worth_its_flops(tmp_path, metric):
    run(policy(1e6, metric), tmp_path/'run')
    assert grow_epochs(tmp_path/'run') == [2]  # window 1: two epochs of the phase, then grow (planned: 3)
    history = pd.read_csv(tmp_path/'run'/'history.csv')
    assert history.depth.tolist() == [8, 8, 14, 14, 14, 14]


def test_the_policy_never_grows_later_than_planned(tmp_path):
    run(policy(1e-12), tmp_path/'run')  # a threshold no improvement falls below: the deadline decides
    assert grow_epochs(tmp_path/'run') == [3]


def test_a_policy_run_resumes_to_the_same_plan(tmp_path):
    whole = write_config(tmp_path/'whole.yaml', policy(1e6))
    assert main(['train', str(whole), '--out', str(tmp_path/'whole')]) == 0
    cut = write_config(tmp_path/'cut.yaml', merge(policy(1e6), {'train': {'interrupt_after_epoch': 3}}))
    assert main(['train', str(cut), '--out', str(tmp_path/'cut')]) == 130  # stopped after the early growth
    assert main(['train', str(cut), '--out', str(tmp_path/'cut')]) == 0
    read = lambda name: json.loads((tmp_path/name/'metrics.json').read_text())
    assert without_clock(read('cut')) == without_clock(read('whole'))
    assert grow_epochs(tmp_path/'cut') == grow_epochs(tmp_path/'whole') == [2]


def test_the_held_peak_decays_to_zero_on_the_final_network_only(tmp_path):
    run(policy(1e6), tmp_path/'run')  # grown at epoch 2, so the final network has 4 epochs to decay over
    steps = pd.read_csv(tmp_path/'run'/'steps.csv')
    per_epoch = len(steps) // 6
    growth_phase, final = steps.lr[:2 * per_epoch], steps.lr[2 * per_epoch:]
    assert (growth_phase == 0.05).all()
    assert final.iloc[0] == 0.05 and final.is_monotonic_decreasing and final.iloc[-1] < 0.05 / (4 * per_epoch) * 1.01


@pytest.mark.parametrize('strategy, message', [
    ({'grow_when': {'metric': 'val_acc', 'threshold': 0.1}}, 'val_acc needs a validation split'),
    ({'grow_when': {'metrc': 'val_acc', 'threshold': 0.1}}, 'did you mean strategy.grow_when.metric'),
    ({'grow_when': {'threshold': 0}}, 'strategy.grow_when.threshold must be > 0'),
    ({'grow_when': 0.1}, 'strategy.grow_when must be null or a mapping'),
    ({'grow_epochs': [4]}, 'at least 3 of the 6 epochs'),  # lr=hold: the final network needs 40% of the epochs
    ({'copy_scale': 2}, 'strategy.copy_scale must be'),
])
def test_bad_recipe_settings_fail_before_training_with_the_fix(strategy, message):
    config = merge(GROWING, {'dataset': {'val_size': 0}, 'strategy': strategy})
    with pytest.raises(ValueError, match=message): resolve_config(config)
