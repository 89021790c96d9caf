"""The depth inits `copy` (copy the neighbouring block, both residual branches scaled by `copy_scale`) and
`gaussian_bn` (AutoGrow's GauInit), and the optimiser state a copy starts with after `incres.growstep.grow`."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from incres.growstep import grow, make_optimizer, param_groups
from incres.growth import COPY_SCALED, GROWTH_INITS, MODES, copy_source, function_gap, grow_depth
from incres.network import Network
from incres.resnet import BasicBlock, ResNet, init_weights, resnet
from incres.strategies import plan_phases, resolve_config
from incres.testing import TINY, assert_same_state, random_images, state_of

from test_growth import fixed_net, nets, positions

SCALES = (0.5, 2 ** -0.5)  # Chang et al. 2018; LipGrow (Dong et al. 2020)


def test_registry_entries():
    assert GROWTH_INITS['copy'].preserves_function == 'approx' and GROWTH_INITS['copy'].edits_model
    assert 'ICLR 2018' in GROWTH_INITS['copy'].source and 'ICML 2020' in GROWTH_INITS['copy'].source
    assert GROWTH_INITS['gaussian_bn'].preserves_function == 'no' and not GROWTH_INITS['gaussian_bn'].edits_model
    assert 'AutoGrow' in GROWTH_INITS['gaussian_bn'].source
    assert not any(GROWTH_INITS[k].needs_data for k in ('copy', 'gaussian_bn'))


# copy -------------------------------------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(net=nets(), data=st.data(), s=st.sampled_from(SCALES))
def test_copy_copies_the_nearest_block_and_scales_both(net, data, s):
    stage, index = data.draw(positions(net))
    before = state_of(net)
    blocks = net.stages[stage]
    at = len(blocks) if index is None else index
    copyable = [j for j, b in enumerate(blocks) if b.stride == 1 and b.in_channels == b.out_channels]
    if not copyable:  # only a downsampling block: nothing of the same shape to copy
        message = f"needs a block of the same shape in stage {stage} to copy; use init='zero'"
        with pytest.raises(ValueError, match=message):
            grow_depth(net, stage, index, 'copy', copy_scale=s)
        return
    source = copy_source(net, stage, index)
    distance = lambda j: at - 1 - j if j < at else j - at
    assert source in copyable and distance(source) == min(map(distance, copyable))
    grown = grow_depth(net, stage, index, 'copy', copy_scale=s)
    assert_same_state(net, before)  # the input model is untouched
    assert grown.stage_depths[stage] == net.stage_depths[stage] + 1 and grown.depth == net.depth + 2
    new, moved = grown.stages[stage][at], grown.stages[stage][source + (source >= at)]
    assert isinstance(new, BasicBlock) and not grown.training
    for name, value in blocks[source].state_dict().items():
        want = value * s if name in COPY_SCALED else value
        assert torch.equal(new.state_dict()[name], want) and torch.equal(moved.state_dict()[name], want), name
    others = [b for j, b in enumerate(grown.stages[stage]) if j not in (at, source + (source >= at))]
    for old, kept in zip([b for j, b in enumerate(blocks) if j != source], others): assert_same_state(old, kept)


@settings(max_examples=60, deadline=None)
@given(net=nets(), data=st.data(), s=st.sampled_from(SCALES), seed=st.integers(0, 99))
def test_copy_of_a_zero_branch_is_exact(net, data, s, seed):
    "Insert a `zero` block, then copy it: its branch is 0, scaled or not, so both steps preserve the function."
    stage, index = data.draw(positions(net))
    at = net.stage_depths[stage] if index is None else index
    zeroed = grow_depth(net, stage, index, 'zero', generator=seed)
    grown = grow_depth(zeroed, stage, at + 1, 'copy', copy_scale=s)
    assert copy_source(zeroed, stage, at + 1) == at
    x = random_images(3, net.in_channels, seed=seed)
    for mode in MODES: assert function_gap(net, grown, x, mode) == 0.0, mode


@pytest.mark.parametrize('mode', MODES)
def test_copy_preserves_the_function_to_second_order_for_one_half_and_first_for_lipgrow(mode):
    "Shrink the copied branch f by t: the gap goes as t² for s = 1/2 (first order kept) and as t for s = 1/√2."
    net, x = fixed_net().double(), torch.randn(16, 3, 8, 8, dtype=torch.float64)

    def gap(t, s):
        base = copy.deepcopy(net)
        with torch.no_grad():
            for name in COPY_SCALED: base.stages[1][1].get_parameter(name).mul_(t)
        return function_gap(base, grow_depth(base, 1, 2, 'copy', copy_scale=s), x, mode)

    half, lipgrow = gap(0.1, 0.5) / gap(0.01, 0.5), gap(0.1, 2 ** -0.5) / gap(0.01, 2 ** -0.5)
    assert half > 30, half
    assert 4 < lipgrow < 30, lipgrow
    assert 1e-3 < function_gap(net, grow_depth(net, 1, 2, 'copy'), x, mode, relative=True) < 1  # approx, not exact


def test_copy_keeps_dtype_memory_format_and_refuses_bad_scales():
    net = fixed_net('B').double().to(memory_format=torch.channels_last)
    g = grow_depth(net, 2, init='copy')
    assert {p.dtype for p in g.parameters()} == {torch.float64}
    assert g.stages[2][-1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for bad in (0, -0.5, 1.5, float('nan'), 'half', None):
        with pytest.raises(ValueError, match=r'copy_scale must be a number in \(0, 1\]'):
            grow_depth(net, 2, init='copy', copy_scale=bad)
    assert_same_state(grow_depth(net, 2, init='copy', copy_scale=1), grow_depth(net, 2, init='copy', copy_scale=1.0))
    with pytest.raises(ValueError, match="stage 1 to copy; use init='zero'"):
        grow_depth(ResNet((1, 1), (4, 8)), 1, init='copy')


# gaussian_bn ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', [0, 7])
def test_gaussian_bn_draws_the_last_bn_from_the_generator(seed):
    net = fixed_net()
    block = grow_depth(net, 2, 1, 'gaussian_bn', generator=seed).stages[2][1]
    gen = torch.Generator().manual_seed(seed)
    ref = init_weights(BasicBlock(8, 8), gen)  # the He initialisation first, then γ₂ and β₂ from the generator
    gamma, beta = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    for name in ('conv1.weight', 'conv2.weight', 'bn1.weight', 'bn1.bias'):
        assert torch.equal(block.get_parameter(name), ref.get_parameter(name)), name
    assert torch.equal(block.bn2.weight, gamma) and torch.equal(block.bn2.bias, beta)


def test_gaussian_bn_is_deterministic_and_changes_the_function():
    net, x = fixed_net(), torch.randn(8, 3, 8, 8)
    a, b = (grow_depth(net, 1, 1, 'gaussian_bn', generator=3) for _ in range(2))
    assert_same_state(a, b)
    other = grow_depth(net, 1, 1, 'gaussian_bn', generator=4)
    assert not torch.equal(a.stages[1][1].bn2.weight, other.stages[1][1].bn2.weight)
    rng = torch.random.get_rng_state()
    for mode in MODES: assert function_gap(net, a, x, mode, relative=True) > 1e-2, mode
    assert torch.equal(torch.random.get_rng_state(), rng)


# the optimiser state of a copy --------------------------------------------------------------------------------------

def _copy_growth(copy_scale=None):
    "A ResNet-14 after two SGD steps, and the phase that grows it to ResNet-20 by one copy at the end of each stage."
    cfg = resolve_config({**TINY, 'model': {'depth': 20, 'width': 4},
                          'strategy': {'name': 'incremental', 'grow_epochs': [2], 'start_depths': [2, 2, 2],
                                       'init': 'copy'}})
    plans = plan_phases(cfg)
    settings = {k: v for k, v in plans[1].settings.items() if k != 'copy_scale'}  # grow's default: 0.5
    if copy_scale is not None: settings['copy_scale'] = copy_scale
    torch.manual_seed(0)
    nw = Network(resnet(14, width=4))
    opt = make_optimizer(nw, param_groups(nw, plans[0].births, cfg['optim']), cfg['optim'])
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad(); F.cross_entropy(nw(x), y).backward(); opt.step()
    return nw, opt, dataclasses.replace(plans[1], settings=settings), cfg['optim'], (x, y)


@pytest.mark.parametrize('copy_scale', [None, 0.5, 2 ** -0.5])
def test_grow_gives_a_copy_its_neighbours_momentum(copy_scale):
    nw, opt, plan, optim, calibration = _copy_growth(copy_scale)
    s = 0.5 if copy_scale is None else copy_scale
    new, new_opt, event = grow(nw, opt, plan, plan.births, optim, calibration, seed=0)
    assert plan.inserts == ((0, 2), (1, 2), (2, 2)) and all(f'copy_scale={s:g}' in op for op in event['ops'])
    assert len(new_opt.state) == len(list(new.parameters()))  # the copies too have state
    momentum = lambda o, n, name: o.state[n.get_parameter(name)]['momentum_buffer']
    for stage in range(3):
        source, copied = f'net.stages.{stage}.1', f'net.stages.{stage}.2'
        for name, _ in nw.net.stages[stage][1].named_parameters():
            neighbour = momentum(new_opt, new, f'{source}.{name}')
            assert torch.equal(momentum(new_opt, new, f'{copied}.{name}'), neighbour), name  # the copy = its neighbour
            assert momentum(new_opt, new, f'{copied}.{name}') is not neighbour  # a clone
            old = momentum(opt, nw, f'{source}.{name}')
            assert torch.allclose(neighbour, old * s if name in COPY_SCALED else old, rtol=1e-6, atol=0), name
            assert torch.equal(new.get_parameter(f'{copied}.{name}'), new.get_parameter(f'{source}.{name}'))
    assert 0 < event['max_logit_change'] < 10


def test_a_stage_with_only_its_downsampling_block_gets_a_zero_block_when_copy_has_nothing_to_copy(tmp_path):
    "ResNet-8 -> ResNet-14 with copy: stage 0 copies its block; stages 1 and 2 (one downsampling block) zero-init."
    from incres.train import run
    import json
    config = {**TINY, 'model': {'depth': 20, 'width': 4}, 'train': {'epochs': 3, 'progress': False},
              'strategy': {'name': 'incremental', 'init': 'copy', 'grow_epochs': [1, 2]}}
    run(config, tmp_path / 'run')
    first, second = [json.loads(line) for line in (tmp_path / 'run' / 'events.jsonl').read_text().splitlines()]
    no_block = '(copy: no block of this shape in the stage to copy)'
    assert first['ops'] == ['grow_depth(stage=0, index=1, init=copy, copy_scale=0.5)',
                            f'grow_depth(stage=1, index=1, init=zero) {no_block}',
                            f'grow_depth(stage=2, index=1, init=zero) {no_block}']
    assert all('init=copy' in op for op in second['ops'])  # the zero blocks born at the first growth are copied
