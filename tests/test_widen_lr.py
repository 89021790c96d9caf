"""The learning-rate scale of the channels a widening adds (`strategy.widen_lr_scale`): carried by the optimiser's
parameter groups, applied to the update of the new elements only (gradient, weight decay and momentum alike), kept
through a checkpoint; and variance transfer (`strategy.widen_variance_transfer`) reaching `widen` through `grow`."""
import io

import pytest
import torch
import torch.nn.functional as F

from incres.growstep import grow, make_optimizer, optimizer_groups, param_groups
from incres.network import Network
from incres.resnet import resnet
from incres.strategies import plan_phases, resolve_config


def setting(depth=8, **strategy):
    cfg = resolve_config({'dataset': {'name': 'synthetic'}, 'model': {'depth': depth, 'width': 4},
                          'train': {'epochs': 4}, 'optim': {'weight_decay': 1e-3},
                          'strategy': {'name': 'incremental', 'start_depths': 'final', 'start_width': 2,
                                       'widen_init': 'paired', 'grow_epochs': [2], **strategy}})
    return cfg, plan_phases(cfg)


def grown(**strategy):
    "A ResNet-8 at width 2, one SGD step, widened to width 4 by `grow` with the given strategy settings."
    cfg, plans = setting(**strategy)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    nw = Network(resnet(8, width=2))
    opt = make_optimizer(nw, param_groups(nw, plans[0].births, cfg['optim']), cfg['optim'])
    F.cross_entropy(nw(x), y).backward(); opt.step()
    new, new_opt, event = grow(nw, opt, plans[1], plans[1].births, cfg['optim'], (x, y), seed=0)
    return cfg, nw, new, new_opt, event, (x, y)


def step(network, opt, batch):
    "One SGD step in place (a deepcopy of an optimiser would lose its step hooks: torch pickles only its state)."
    x, y = batch
    F.cross_entropy(network(x), y).backward(); opt.step()
    return network, opt


def test_the_scale_is_on_the_optimisers_groups_and_only_there():
    cfg, old, new, opt, event, _ = grown(widen_lr_scale=3.0)
    groups = optimizer_groups(opt, new)
    assert [g['widen_lr_scale'] for g in groups] == [3.0] and [g['widen_lr_scale'] for g in opt.param_groups] == [3.0]
    shapes = dict(zip(groups[0]['params'], groups[0]['old_shapes']))
    assert shapes['net.stem.0.weight'] == (2, 3, 3, 3) and shapes['net.stages.2.0.conv2.weight'] == (8, 8, 3, 3)
    assert shapes['net.fc.weight'] == (10, 8) and shapes['net.fc.bias'] is None  # the bias did not grow
    assert all(tuple(p.shape) == tuple(s) for p, s in zip(old.parameters(), groups[0]['old_shapes']) if s)
    _, _, plain, plain_opt, _, _ = grown()
    assert not any(k in g for g in optimizer_groups(plain_opt, plain) for k in ('widen_lr_scale', 'old_shapes'))
    assert not plain_opt._optimizer_step_pre_hooks and not plain_opt._optimizer_step_post_hooks  # unchanged optimiser


@pytest.mark.parametrize('scale', [0.25, 3.0])
def test_new_elements_move_scale_times_as_far_and_old_ones_as_without(scale):
    "One SGD step (Nesterov momentum, weight decay) from the same grown network, with and without the scale."
    *_, new, opt, _, batch = grown(widen_lr_scale=scale)
    *_, plain, plain_opt, _, _ = grown()
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), plain.state_dict().values()))
    shapes = dict(zip(optimizer_groups(opt, new)[0]['params'], opt.param_groups[0]['old_shapes']))
    start = {n: p.detach().clone() for n, p in new.named_parameters()}
    (a, opt_a), (b, opt_b) = step(new, opt, batch), step(plain, plain_opt, batch)
    moved_new = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(opt_a.state[pa]['momentum_buffer'], opt_b.state[pb]['momentum_buffer']), name
        pa, pb, p0 = pa.detach(), pb.detach(), start[name]
        if shapes[name] is None:
            assert torch.equal(pa, pb), name
            continue
        box, new_part = tuple(slice(0, n) for n in shapes[name]), torch.ones_like(pa, dtype=torch.bool)
        new_part[box] = False
        assert torch.equal(pa[box], pb[box]), name
        da, db = (pa - p0)[new_part], (pb - p0)[new_part]
        assert torch.allclose(da, scale * db, rtol=1e-4, atol=1e-7), name
        moved_new += int((db != 0).any())
    assert moved_new > 5  # most widened tensors' new elements moved: the check above is not vacuous


def test_the_scale_survives_a_checkpoint():
    "The groups and state a checkpoint stores rebuild an optimiser that takes the same scaled step (as on resume)."
    *_, new, opt, _, batch = grown(widen_lr_scale=3.0)
    *_, twin, _, _, _ = grown(widen_lr_scale=3.0)
    *_, plain, plain_opt, _, _ = grown()
    buffer = io.BytesIO()
    torch.save({'groups': optimizer_groups(opt, new), 'optimizer': opt.state_dict()}, buffer)
    blob = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    cfg, _ = setting(widen_lr_scale=3.0)
    restored = make_optimizer(twin, blob['groups'], cfg['optim']); restored.load_state_dict(blob['optimizer'])
    assert optimizer_groups(restored, twin) == optimizer_groups(opt, new)
    (a, _), (b, _), (c, _) = step(new, opt, batch), step(twin, restored, batch), step(plain, plain_opt, batch)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))  # the scale acted


def test_variance_transfer_reaches_widen_through_grow():
    _, old, new, _, event, (x, y) = grown(widen_variance_transfer=True)
    _, _, plain, _, plain_event, _ = grown()
    assert event['ops'] == [f'widen(stage={s}, width={w}, init=paired, variance_transfer)'
                            for s, w in enumerate((4, 8, 16))]
    assert plain_event['ops'] == [f'widen(stage={s}, width={w}, init=paired)' for s, w in enumerate((4, 8, 16))]
    w, w0 = new.net.stages[1][0].conv2.weight.detach(), plain.net.stages[1][0].conv2.weight.detach()
    assert torch.allclose(w[:4, :4], w0[:4, :4] * 0.5 ** 0.5) and torch.equal(w[4:], w0[4:])  # 4 -> 8 channels
    assert event['max_logit_change'] < 1e-3


def test_bad_settings_are_one_clear_line():
    for strategy, message in [({'widen_lr_scale': -1}, 'strategy.widen_lr_scale must be > 0'),
                              ({'widen_lr_scale': 0}, 'strategy.widen_lr_scale must be > 0'),
                              ({'widen_variance_transfer': 'yes'},
                               'strategy.widen_variance_transfer must be true or false'),
                              ({'widen_variance_transfer': True, 'widen_init': 'net2net'},
                               "widen_variance_transfer needs widen_init in ['random', 'paired']"),
                              ({'depth': 14, 'widen_lr_scale': 2.0, 'start_width': None, 'start_depths': [1, 1, 1]},
                               'strategy.widen_lr_scale applies to a widening: set strategy.start_width')]:
        with pytest.raises(ValueError) as e: setting(**strategy)
        assert message in str(e.value) and '\n' not in str(e.value), (strategy, str(e.value))


def test_the_options_are_opt_in():
    "Left at their defaults, the settings appear nowhere in a resolved config: earlier configs resolve unchanged."
    cfg, plans = setting()
    assert 'widen_lr_scale' not in cfg['strategy'] and 'widen_variance_transfer' not in cfg['strategy']
    assert not any(k.startswith('widen_') and k != 'widen_init' for ph in cfg['strategy']['phases'] for k in ph)
    cfg, plans = setting(widen_lr_scale=1.0, widen_variance_transfer=False)
    assert 'widen_lr_scale' not in cfg['strategy'] and 'widen_lr_scale' not in plans[1].settings
    cfg, plans = setting(widen_lr_scale=2.0, widen_variance_transfer=True)
    assert cfg['strategy']['widen_lr_scale'] == 2.0 and plans[1].settings['widen_variance_transfer'] is True
    assert 'widen_lr_scale' not in plans[0].settings  # the first phase does not widen
