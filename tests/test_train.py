"""The training engine end to end: every strategy through the command line, optimiser state across growth,
FLOPs against a hand count, kill-and-resume equality, bad configurations, divergence, and DDP under torchrun."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from incres.cli import main
from incres.growstep import grow
from incres.strategies import merge
from incres.testing import TINY, hand_flops_per_image, without_clock, write_config
from incres.train import run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}  # one thread, as in-process (conftest)

# `incres train ARGS`, stopped by a signal the run sends itself at a chosen point: deterministic, whatever the speed
# of the machine. argv: event ('checkpoint_saved' or 'epoch_end'), epoch, signal name, then the command line.
STOP_SCRIPT = """
import os, signal, sys
from functools import partial
import incres.train
from incres.cli import main
event, epoch, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a background job inherits SIGINT ignored
def stop(name, trainer):
    if name == event and trainer.counters['epoch'] == epoch: os.kill(os.getpid(), sig)
incres.train.run = partial(incres.train.run, callbacks=[stop])
sys.exit(main(sys.argv[4:]))
"""


def train_stopped(tmp_path, config: Path, out: Path, event: str, epoch: int, sig: str):
    "Run `incres train config --out out` in a subprocess that sends itself `sig` at `event` of `epoch`."
    script = tmp_path/'stop.py'
    script.write_text(STOP_SCRIPT)
    return subprocess.run([sys.executable, str(script), event, str(epoch), sig, 'train', str(config),
                           '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('strategy, extra', [
    ('e2e', {}), ('incremental', {'init': 'random', 'trainable': 'new_then_all'}), ('net2net', {'lr_scale': 0.5}),
    ('dils', {'init': 'dils_approx'}), ('greedy', {'hidden_layers': 2}), ('dgl', {})])
def test_every_strategy_through_the_cli(tmp_path, capsys, strategy, extra):
    cfg = write_config(tmp_path/'c.yaml',
                       merge(TINY, {'strategy': {'name': strategy, **extra}, 'train': {'epochs': 6}}))
    assert main(['train', str(cfg), '--out', str(tmp_path/'run'), '--set', 'train.seed=1']) == 0
    assert 'test_acc' in capsys.readouterr().out
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    for key in ('test_acc', 'train_flops', 'train_seconds', 'params', 'depth', 'strategy', 'dataset', 'seed',
                'eval_flops'):
        assert m[key] is not None, key
    assert (m['strategy'], m['dataset'], m['seed'], m['epochs']) == (strategy, 'synthetic', 1, 6)
    assert m['train_flops'] == m['step_flops'] + m['growth_flops'] + m['cache_flops'] > 0
    assert 0.1 < m['test_acc'] <= 1 and m['train_seconds'] > 0
    hist = pd.read_csv(tmp_path/'run'/'history.csv')
    assert list(hist.epoch) == [1, 2, 3, 4, 5, 6] and hist.train_flops.is_monotonic_increasing
    assert yaml.safe_load((tmp_path/'run'/'config.yaml').read_text())['strategy']['name'] == strategy
    events = [json.loads(line) for line in (tmp_path/'run'/'events.jsonl').read_text().splitlines()]
    assert len(events) == m['growth_events'] == {'e2e': 0, 'dgl': 0, 'greedy': 5}.get(strategy, 1)
    if strategy in ('greedy', 'dgl'):
        assert len(m['head_accs']) == 6 and m['head_accs'][-1] == m['test_acc'] and 0 < m['ensemble_acc'] <= 1
        assert m['depth'] == 1 + 2 * 6 + extra.get('hidden_layers', 1) + 1
    else:
        assert m['depth'] == (11 if strategy in ('net2net', 'dils') else 14)


def test_optimizer_state_across_growth(tmp_path):
    "Old parameters keep their momentum (under their new names), new ones join in a group of their own."
    cfg = merge(TINY, {'strategy': {'name': 'incremental', 'grow_epochs': [1], 'position': 'front'},
                       'train': {'epochs': 2}})
    seen = {}
    def after_first_epoch(event, trainer):
        if event == 'epoch_end' and trainer.counters['epoch'] == 1:
            seen.update(trainer=trainer, net=trainer.network, opt=trainer.opt)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): run(cfg, tmp_path, callbacks=[after_first_epoch])
    t, old_net, old_opt = seen['trainer'], seen['net'], seen['opt']
    old_buffers = {n: old_opt.state[p]['momentum_buffer'].clone() for n, p in old_net.named_parameters()}
    old_values = {n: p.detach().clone() for n, p in old_net.named_parameters()}
    plan = t.plans[1]
    calibration = (torch.randn(16, 3, 16, 16).to(memory_format=torch.channels_last), torch.randint(0, 10, (16,)))
    network, opt, event = grow(old_net, old_opt, plan, plan.births, t.cfg['optim'], calibration, seed=0,
                               memory_format=torch.channels_last)
    new = dict(network.named_parameters())
    assert plan.inserts == ((0, 0), (1, 1), (2, 1))  # 'front': before the first block of stage 0, after the others
    assert len(new) == len(old_buffers) + 3 * 6  # three BasicBlocks: 2 convolutions, 2 BatchNorms (weight, bias)
    for name, buf in old_buffers.items():
        moved = name.replace('net.stages.0.0.', 'net.stages.0.1.')
        assert torch.equal(opt.state[new[moved]]['momentum_buffer'], buf), name
        assert torch.equal(new[moved].detach(), old_values[name]), name  # zero-init growth leaves old weights alone
    fresh = [n for n in new if n.startswith(('net.stages.0.0.', 'net.stages.1.1.', 'net.stages.2.1.'))]
    assert len(fresh) == 18 and not any(new[n] in opt.state for n in fresh)
    groups = {g['name']: g for g in opt.param_groups}
    assert set(groups) == {'phase0', 'phase1'}
    assert {id(p) for p in groups['phase1']['params']} == {id(new[n]) for n in fresh}
    assert all(g['weight_decay'] == 1e-4 and g['momentum'] == 0.9 and g['nesterov'] for g in groups.values())
    # the grown network trains from there, the optimiser covering every parameter exactly once
    assert sum(len(g['params']) for g in opt.param_groups) == len(new)
    assert (event['depth_before'], event['depth_after']) == (8, 14) and event['max_logit_change'] < 1e-5


def test_flops_match_a_hand_count(tmp_path):
    cfg = merge(TINY, {'model': {'depth': 8}, 'train': {'epochs': 2}})
    m = run(cfg, tmp_path)
    forward, step = hand_flops_per_image()
    steps, images = 2 * 7, 64  # 448 training images in batches of 64
    assert m['step_flops'] == m['train_flops'] == steps * images * step
    assert m['eval_flops'] == 2 * (64 + 256) * forward  # validation + test images, after every epoch


def test_flops_of_growth_and_frozen_prefix(tmp_path):
    "Training only the new blocks costs exactly what the hand count of that partial backward says."
    cfg = merge(TINY, {'model': {'depth': 14}, 'train': {'epochs': 2},
                       'strategy': {'name': 'incremental', 'grow_epochs': [1], 'trainable': 'new', 'train_head': True}})
    m = run(cfg, tmp_path)
    f8, s8 = hand_flops_per_image((1, 1, 1))
    f14, s14 = hand_flops_per_image((2, 2, 2))
    # phase 1: stem and stage-0 block 0 are a frozen prefix (forward only, no autograd); the rest of the network
    # needs input gradients (except the first new block's first convolution, whose input comes from the prefix), but
    # only the new blocks and the classifier need weight gradients
    conv = lambda cin, cout, hw: 2 * cin * 9 * cout * hw * hw
    prefix = conv(3, 4, 16) + 2 * conv(4, 4, 16)
    weight_grads = 2 * conv(4, 4, 16) + 2 * conv(8, 8, 8) + 2 * conv(16, 16, 4) + 2 * 16 * 10
    input_grads = (conv(4, 4, 16) + conv(4, 8, 8) + 3 * conv(8, 8, 8) + conv(8, 16, 4) + 3 * conv(16, 16, 4)
                   + 2 * 16 * 10)
    assert m['step_flops'] == 7 * 64 * (s8 + f14 + weight_grads + input_grads)
    assert f14 - prefix > 0 and m['growth_flops'] == 0 and m['cache_flops'] == 0


@pytest.mark.parametrize('event', ['epoch_end', 'checkpoint_saved'])
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, event):
    "SIGKILL after epoch 3 (after its logs, or between its checkpoint and its logs); resumed, it equals the whole run."
    cfg = merge(TINY, {'train': {'epochs': 8}, 'optim': {'schedule': 'cosine'},
                       'strategy': {'name': 'incremental', 'init': 'net2deeper', 'grow_epochs': [3]}})
    whole = run(cfg, tmp_path/'whole')
    res = train_stopped(tmp_path, write_config(tmp_path/'c.yaml', cfg), tmp_path/'cut', event, 3, 'SIGKILL')
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (tmp_path/'cut'/'metrics.json').exists()
    assert torch.load(tmp_path/'cut'/'checkpoint'/'last.pt', weights_only=False)['counters']['epoch'] == 3
    resumed = run(cfg, tmp_path/'cut')
    assert without_clock(resumed) == without_clock(whole)
    drop = lambda f: pd.read_csv(f).drop(columns=['train_seconds', 'eval_seconds'])
    pd.testing.assert_frame_equal(drop(tmp_path/'cut'/'history.csv'), drop(tmp_path/'whole'/'history.csv'))
    assert (tmp_path/'cut'/'steps.csv').read_text() == (tmp_path/'whole'/'steps.csv').read_text()
    strip = lambda f: [{k: v for k, v in json.loads(l).items() if 'seconds' not in k}
                       for l in f.read_text().splitlines()]
    assert strip(tmp_path/'cut'/'events.jsonl') == strip(tmp_path/'whole'/'events.jsonl')
    dvc = pd.read_csv(tmp_path/'cut'/'dvclive'/'plots'/'metrics'/'test_acc.tsv', sep='\t')
    assert list(dvc.step) == list(range(1, 9))  # the DVCLive logs were replayed, not duplicated


def test_ctrl_c_exits_130_and_leaves_a_resumable_checkpoint(tmp_path):
    "A real SIGINT after epoch 2 (sent by the run to itself, so the test does not race the run)."
    cfg = merge(TINY, {'train': {'epochs': 5}})
    res = train_stopped(tmp_path, write_config(tmp_path/'c.yaml', cfg), tmp_path/'run', 'epoch_end', 2, 'SIGINT')
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"incres train: interrupted; the checkpoint of the last completed epoch is in {tmp_path/'run'/'checkpoint'}: "
        'run the same command again to resume'], res.stderr
    assert torch.load(tmp_path/'run'/'checkpoint'/'last.pt', weights_only=False)['counters']['epoch'] == 2
    assert run(cfg, tmp_path/'run')['epochs'] == 5


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys):
    cfg = write_config(tmp_path/'c.yaml', merge(TINY, {'train': {'checkpoint': False, 'interrupt_after_epoch': 1}}))
    assert main(['train', str(cfg), '--out', str(tmp_path/'run')]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        'incres train: interrupted before the first checkpoint; nothing to resume: run the same command again to '
        'start over']


@pytest.mark.parametrize('override, message', [
    ('optim.lrr=0.1', 'unknown key optim.lrr; did you mean optim.lr?'),
    ('strategy.name=incremnetal', "did you mean 'incremental'?"),
    ('train.epochs=ten', 'train.epochs must be an integer'),
    ('dataset.name=cifar100', "dataset.name must be one of"),
])
def test_bad_configs_fail_before_any_compute(tmp_path, capsys, override, message):
    cfg = write_config(tmp_path/'c.yaml', TINY)
    assert main(['train', str(cfg), '--out', str(tmp_path/'run'), '--set', override]) == 2
    err = capsys.readouterr().err
    assert err.startswith('incres: error: ') and message in err, err
    assert not (tmp_path/'run').exists()


@pytest.mark.parametrize('change, message', [
    ({'strategy': {'name': 'custom', 'phases': [{'epochs': 2, 'stage_depths': [1, 1, 1]},
                                                {'epochs': 2, 'stage_depths': [1, 1, 1, 1]}]}},
     'has 4 stages but the network has 3 (stages 0..2): a phase can only grow stages that exist'),
    ({'strategy': {'name': 'custom', 'phases': [{'epochs': 2, 'stage_depths': [2, 2, 2]},
                                                {'epochs': 2, 'stage_depths': [1, 2, 2]}]}},
     'phases out of order: strategy.phases[1].stage_depths shrinks stage 0 from 2 to 1 blocks'),
    ({'strategy': {'name': 'incremental', 'start_width': 8}}, 'widths shrinks stage 0 from 8 to 4 channels'),
    ({'strategy': {'name': 'incremental', 'grow_epochs': [3, 2]}, 'model': {'depth': 20}},
     'growth epochs [3, 2] must be increasing integers strictly between 0 and train.epochs=4'),
    ({'strategy': {'name': 'incremental', 'grow_epochs': [2, 3]}},
     'lists 2 epochs but going from [1, 1, 1] to [2, 2, 2] blocks 1 at a time takes 1 growth'),
    ({'strategy': {'name': 'greedy'}}, 'greedy trains the 6 blocks one at a time and needs train.epochs >= 6'),
])
def test_impossible_schedules_are_named(tmp_path, change, message):
    with pytest.raises(ValueError) as e: run(merge(TINY, change), tmp_path/'run')
    assert message in str(e.value)
    assert not (tmp_path/'run').exists()


def test_nan_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    cfg = merge(TINY, {'train': {'epochs': 3, 'log_every': 1},
                       'strategy': {'name': 'custom', 'phases': [{'epochs': 1}, {'epochs': 2, 'lr_scale': 1e12}]}})
    assert main(['train', str(write_config(tmp_path/'c.yaml', cfg)), '--out', str(tmp_path/'run')]) == 1
    err = capsys.readouterr().err
    assert 'the training loss became' in err and 'at epoch 2, step' in err and 'after epoch 1' in err, err
    assert torch.load(tmp_path/'run'/'checkpoint'/'last.pt', weights_only=False)['counters']['epoch'] == 1
    assert len(pd.read_csv(tmp_path/'run'/'history.csv')) == 1
    assert not (tmp_path/'run'/'metrics.json').exists()


def test_feature_cache_budget_is_checked_before_training(tmp_path):
    cfg = merge(TINY, {'strategy': {'name': 'greedy'}, 'train': {'epochs': 6},
                       'compute': {'cache_features': True, 'memory_budget_gb': 1e-4}})
    with pytest.raises(ValueError, match=r'feature cache of phase 1 .* more than the memory budget'):
        run(cfg, tmp_path/'run')
    assert not (tmp_path/'run'/'checkpoint').exists()
    m = run(merge(cfg, {'compute': {'memory_budget_gb': 1.0}}), tmp_path/'ok')
    hist = pd.read_csv(tmp_path/'ok'/'history.csv')
    assert list(hist.prefix) == [0, 2, 3, 4, 5, 6] and list(hist.cached) == [False] + [True] * 5
    # the cache holds the 448 training images' features at the prefix boundary (float32)
    assert hist.cache_bytes[1] == 448 * 4 * 16 * 16 * 4 and hist.cache_bytes[3] == 448 * 8 * 8 * 8 * 4
    assert m['cache_flops'] > 0


DDP_SCRIPT = '''
import hashlib, json, os, sys, torch
from incres.train import Trainer
t = Trainer(sys.argv[1], sys.argv[2])
m = t.fit()
digest = hashlib.sha256(b''.join(v.cpu().numpy().tobytes() for v in t.network.state_dict().values())).hexdigest()
path = os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json")
open(path, 'w').write(json.dumps({'digest': digest, 'metrics': m}))
'''


def test_torchrun_two_processes_gloo(tmp_path):
    cfg = merge(TINY, {'train': {'epochs': 3},
                       'strategy': {'name': 'incremental', 'init': 'dils_analytic', 'grow_epochs': [1]}})
    config = write_config(tmp_path/'c.yaml', cfg)
    script = tmp_path/'ddp.py'
    script.write_text(DDP_SCRIPT)
    out = tmp_path/'ddp'
    res = subprocess.run([str(BIN/'torchrun'), '--standalone', '--nproc_per_node', '2', str(script), str(config),
                          str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0]['digest'] == ranks[1]['digest']  # the processes hold the same network
    m = json.loads((out/'metrics.json').read_text())
    assert m['world_size'] == 2 and m['epochs'] == 3 and m['growth_events'] == 1
    single = run(cfg, tmp_path/'single')
    # the same compute: the global batch is split over the processes and FLOPs are summed over them
    for key in ('step_flops', 'growth_flops', 'eval_flops', 'train_flops', 'steps', 'params', 'depth'):
        assert m[key] == single[key], key
    assert len(pd.read_csv(out/'history.csv')) == 3 and m['test_acc'] > 0.2
