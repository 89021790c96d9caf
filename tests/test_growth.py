"""Property tests of the growth operators over random small ResNets: function preservation, bookkeeping,
the input model left untouched, composition, and ValueErrors for bad arguments."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from incres.growth import (GROWTH_INITS, MODES, VARIANCE_TRANSFER_INITS, WIDEN_INITS, _conv_bn_pairs, function_gap,
                           grow_depth, widen)
from incres.resnet import BasicBlock, PlainLayer, ResNet
from incres.testing import assert_same_state, random_images, state_of

EXACT_DEPTH = [k for k, v in GROWTH_INITS.items() if v.preserves_function == 'exact']
EXACT_WIDEN = st.sampled_from([k for k, v in WIDEN_INITS.items() if v.preserves_function == 'exact'])
TOL = 1e-5  # relative max |Δ logits|; float32 round-off is ~1e-7


def warmed_up(net: ResNet, seed: int) -> ResNet:
    "Give the BatchNorms non-trivial running statistics, as after some training."
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(2): net(torch.randn(4, net.in_channels, 8, 8, generator=gen) * 2 + 0.5)
    return net


@st.composite
def nets(draw, max_stages=3):
    "A small random ResNet on 8×8 images (1 or 3 channels, option A or B shortcuts), warmed up, in eval mode."
    n = draw(st.integers(1, max_stages))
    depths = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    widths = sorted(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)))  # option A needs non-decreasing widths
    in_channels, shortcut = draw(st.sampled_from([1, 3])), draw(st.sampled_from(['A', 'B']))
    seed = draw(st.integers(0, 2 ** 16))
    torch.manual_seed(seed)
    return warmed_up(ResNet(depths, widths, in_channels, num_classes=3, shortcut=shortcut), seed).eval()


def positions(net: ResNet):
    "Strategy for a valid (stage, index): stage 0 takes 0..n, later stages 1..n; None is the end."
    return st.integers(0, len(net.stages) - 1).flatmap(
        lambda s: st.tuples(st.just(s), st.none() | st.integers(0 if s == 0 else 1, net.stage_depths[s])))


@settings(max_examples=150)
@given(net=nets(), data=st.data(), init=st.sampled_from(EXACT_DEPTH), size=st.integers(2, 4), seed=st.integers(0, 99))
def test_grow_depth_preserves_function(net, data, init, size, seed):
    stage, index = data.draw(positions(net))
    x, before = random_images(size, net.in_channels, seed=seed), state_of(net)
    grown = grow_depth(net, stage, index, init, data=x, generator=seed)
    assert_same_state(net, before)  # the input model is untouched
    at = net.stage_depths[stage] if index is None else index
    added = grown.stages[stage][at]
    assert isinstance(added, PlainLayer if init == 'net2deeper' else BasicBlock)
    expected = list(net.stage_depths); expected[stage] += 1
    assert grown.stage_depths == tuple(expected) and grown.widths == net.widths
    assert grown.depth == net.depth + added.n_layers
    assert not grown.training
    for mode in MODES:  # train mode: on the calibration batch
        assert function_gap(net, grown, x, mode, relative=True) < TOL, (mode, stage, index)


@settings(max_examples=100)
@given(net=nets(), data=st.data(), extra=st.integers(1, 5), size=st.integers(2, 4), seed=st.integers(0, 99))
def test_widen_net2net_is_exact(net, data, extra, size, seed):
    stage = data.draw(st.integers(0, len(net.stages) - 1))
    width = net.widths[stage] + extra
    x, before = random_images(size, net.in_channels, seed=seed), state_of(net)
    wide = widen(net, stage, width, generator=seed)
    assert_same_state(net, before)
    expected = list(net.widths); expected[stage] = width
    assert wide.widths == tuple(expected) and wide.stage_depths == net.stage_depths and wide.depth == net.depth
    for mode in MODES:
        assert function_gap(net, wide, x, mode, relative=True) < TOL, (mode, stage, width)
    assert wide(x).shape == (size, 3)


@settings(max_examples=100)
@given(net=nets(), data=st.data(), extra=st.integers(1, 6), size=st.integers(2, 4), seed=st.integers(0, 99))
def test_widen_paired_is_exact(net, data, extra, size, seed):
    "Pairs with equal fan-in and opposite fan-out (an odd last one with zero fan-out) cancel in both modes."
    stage = data.draw(st.integers(0, len(net.stages) - 1))
    old, width = net.widths[stage], net.widths[stage] + extra
    x, before = random_images(size, net.in_channels, seed=seed), state_of(net)
    wide = widen(net, stage, width, 'paired', generator=seed)
    assert_same_state(net, before)
    expected = list(net.widths); expected[stage] = width
    assert wide.widths == tuple(expected) and wide.stage_depths == net.stage_depths and wide.depth == net.depth
    for mode in MODES:
        assert function_gap(net, wide, x, mode, relative=True) < TOL, (mode, stage, width)
    for block in wide.stages[stage]:  # the pairs, in every producer and consumer of the stage
        for bn in (block.bn1, block.bn2):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                assert torch.equal(t[old + 1:width:2], t[old:width - 1:2][:len(t[old + 1:width:2])])
        w = block.conv2.weight.detach()
        n = extra // 2 * 2
        assert torch.equal(w[old + 1:old + n:2], w[old:old + n:2])
        assert torch.equal(w[:, old + 1:old + n:2], -w[:, old:old + n:2])
        assert not w[:, old + n:].any()
    assert_same_state(wide, widen(net, stage, width, 'paired', noise=0.5, generator=seed))  # noise: net2net only


def eps_corrected(wide: ResNet, net: ResNet) -> ResNet:
    "`wide` with ε × n/n′ in each BatchNorm after a convolution whose fan-in grew from n to n′."
    wide = copy.deepcopy(wide)
    for (oc, _), (nc, nb) in zip(_conv_bn_pairs(net), _conv_bn_pairs(wide), strict=True):
        nb.eps *= oc.in_channels / nc.in_channels
    return wide


@settings(max_examples=100)
@given(net=nets(), data=st.data(), init=st.sampled_from(list(WIDEN_INITS)), vt=st.booleans(),
       extra=st.integers(1, 6), size=st.integers(2, 4), seed=st.integers(0, 99))
def test_every_width_init_with_and_without_variance_transfer(net, data, init, vt, extra, size, seed):
    """Exact inits stay exact; variance transfer scales exactly the old block of every convolution whose fan-in grew
    (and its BN's running statistics) and, for paired, changes the function only through BatchNorm's ε."""
    stage = data.draw(st.integers(0, len(net.stages) - 1))
    width = net.widths[stage] + extra
    x, before = random_images(size, net.in_channels, seed=seed), state_of(net)
    if vt and init not in VARIANCE_TRANSFER_INITS:
        with pytest.raises(ValueError, match='variance_transfer rescales old weights'):
            widen(net, stage, width, init, generator=seed, variance_transfer=True)
        return
    wide = widen(net, stage, width, init, generator=seed, variance_transfer=vt)
    assert_same_state(net, before)
    assert all(t.isfinite().all() for t in wide.state_dict().values() if t.is_floating_point())
    if not vt:
        if WIDEN_INITS[init].preserves_function == 'exact':
            for mode in MODES: assert function_gap(net, wide, x, mode, relative=True) < TOL, (init, mode)
        return
    plain, scaled = widen(net, stage, width, init, generator=seed), 0
    for (oc, ob), (pc, pb), (vc, vb) in zip(_conv_bn_pairs(net), _conv_bn_pairs(plain), _conv_bn_pairs(wide)):
        n, m, c = oc.in_channels, oc.out_channels, (oc.in_channels / vc.in_channels) ** 0.5
        pw, vw = pc.weight.detach(), vc.weight.detach()
        assert torch.allclose(vw[:m, :n], pw[:m, :n] * c, rtol=1e-6, atol=0)
        assert torch.equal(vw[m:], pw[m:]) and torch.equal(vw[:m, n:], pw[:m, n:])  # new weights: as drawn
        assert torch.allclose(vb.running_var[:m], pb.running_var[:m] * c * c, rtol=1e-6, atol=0)
        assert torch.allclose(vb.running_mean[:m], pb.running_mean[:m] * c, rtol=1e-6, atol=1e-30)
        scaled += c < 1
    assert scaled > 0  # every block's conv2 reads the block's own widened channels
    assert_same_state(wide.fc, plain.fc)  # the classifier: no BatchNorm after it, not rescaled
    if init == 'paired':
        for mode in MODES:
            assert function_gap(net, eps_corrected(wide, net), x, mode, relative=True) < TOL, mode


def test_variance_transfer_bad_arguments():
    net = fixed_net()
    for init in ('net2net', 'net2net_noise'):
        with pytest.raises(ValueError, match=r"needs init in \['random', 'paired'\], got '" + init):
            widen(net, 1, 12, init, variance_transfer=True)
    for bad in ('yes', 1, None):
        with pytest.raises(ValueError, match='variance_transfer must be True or False'):
            widen(net, 1, 12, 'paired', variance_transfer=bad)
    assert VARIANCE_TRANSFER_INITS == ('random', 'paired')


def test_variance_transfer_is_within_eps_of_exact():
    "With ε as it is, paired + variance transfer moves the logits by about ε / σ² (ε = 1e-5), far below `random`."
    net, x = fixed_net('B'), torch.randn(16, 3, 8, 8)
    wide = widen(net, 1, 16, 'paired', generator=0, variance_transfer=True)
    for mode in MODES:
        assert 0 < function_gap(net, wide, x, mode, relative=True) < 1e-3, mode
        assert function_gap(net, eps_corrected(wide, net), x, mode, relative=True) < TOL, mode


def test_paired_pairs_separate_at_the_first_step():
    net, x = fixed_net('B'), torch.randn(8, 3, 8, 8)
    wide = widen(net, 2, 12, 'paired', generator=0)
    F.cross_entropy(wide.train()(x), torch.randint(0, 5, (8,))).backward()
    block = wide.stages[2][1]
    fan_in, fan_out = block.conv1.weight.grad, block.conv2.weight.grad  # of the block's new channels 8 and 9
    assert torch.equal(fan_in[9], -fan_in[8]) and fan_in[8].abs().sum() > 0  # V, V: opposite gradients
    assert torch.equal(fan_out[:, 9], fan_out[:, 8])  # Z, −Z: equal gradients (the activations are equal)
    torch.optim.SGD(wide.parameters(), lr=0.1).step()
    assert not torch.equal(block.conv1.weight[9], block.conv1.weight[8])


@pytest.mark.parametrize('first', ['paired', 'random'])
def test_net2net_after_a_fresh_widening_keeps_an_option_a_shortcut_exact(first):
    "After random pad or paired the consumer's zero-pad index names fewer channels than the stream carries."
    torch.manual_seed(0)
    net = warmed_up(ResNet((1, 1), (1, 2), in_channels=1, num_classes=3), 0).eval()
    wide, x = widen(net, 0, 2, first, generator=0), random_images(4, 1, seed=0)
    for seed in range(8):  # copies of channel 0 and of channel 1, which the shortcut never reads
        for mode in MODES: assert function_gap(wide, widen(wide, 0, 3, generator=seed), x, mode, relative=True) < TOL


@settings(max_examples=80)
@given(net=nets(), data=st.data(), size=st.integers(2, 4), seed=st.integers(0, 99))
def test_growth_composes(net, data, size, seed):
    "A random sequence of exact growth steps and widenings keeps the function and the bookkeeping."
    x, grown = random_images(size, net.in_channels, seed=seed), net
    depths, widths, depth = list(net.stage_depths), list(net.widths), net.depth
    for step in range(data.draw(st.integers(2, 5))):
        if data.draw(st.booleans()):
            stage, index = data.draw(positions(grown))
            init = data.draw(st.sampled_from(EXACT_DEPTH))
            grown = grow_depth(grown, stage, index, init, data=x, generator=step)
            depths[stage] += 1; depth += 1 if init == 'net2deeper' else 2
        else:
            stage = data.draw(st.integers(0, len(widths) - 1))
            widths[stage] += data.draw(st.integers(1, 3))
            grown = widen(grown, stage, widths[stage], data.draw(EXACT_WIDEN), generator=step)
    assert (grown.stage_depths, grown.widths, grown.depth) == (tuple(depths), tuple(widths), depth)
    for mode in MODES:
        assert function_gap(net, grown, x, mode, relative=True) < TOL, mode


@settings(max_examples=60)
@given(net=nets(), data=st.data(), init=st.sampled_from(list(GROWTH_INITS)), seed=st.integers(0, 99))
def test_every_init_is_deterministic_and_trainable(net, data, init, seed):
    stage, index = data.draw(positions(net))
    x = random_images(3, net.in_channels, seed=seed)
    if init == 'copy' and not any(b.stride == 1 and b.in_channels == b.out_channels for b in net.stages[stage]):
        with pytest.raises(ValueError, match='needs a block of the same shape'): grow_depth(net, stage, index, init)
        return  # nothing to copy (see tests/test_copy_init.py)
    a = grow_depth(net, stage, index, init, data=x, generator=seed)
    b = grow_depth(net, stage, index, init, data=x, generator=seed)
    assert_same_state(a, b)
    F.cross_entropy(a.train()(x), torch.zeros(3, dtype=torch.long)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())


@settings(max_examples=60)
@given(net=nets(), data=st.data())
def test_bad_arguments_raise_value_error(net, data):
    n = len(net.stages)
    bad_stage = data.draw(st.integers(-3, n + 3).filter(lambda s: not 0 <= s < n))
    with pytest.raises(ValueError, match='stage must be one of'): grow_depth(net, bad_stage)
    with pytest.raises(ValueError, match='stage must be one of'): widen(net, bad_stage, 100)
    stage = data.draw(st.integers(0, n - 1))
    first, last = (0 if stage == 0 else 1), net.stage_depths[stage]
    bad_index = data.draw(st.integers(-3, last + 3).filter(lambda i: not first <= i <= last))
    with pytest.raises(ValueError, match=f'index for stage {stage} must be one of'): grow_depth(net, stage, bad_index)
    with pytest.raises(ValueError, match='width must be an integer larger'):
        widen(net, stage, data.draw(st.integers(-1, net.widths[stage])))
    bad_init = data.draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in GROWTH_INITS))
    with pytest.raises(ValueError, match="init must be one of \\['zero'"): grow_depth(net, stage, None, bad_init)
    with pytest.raises(ValueError, match="init must be one of \\['net2net'"): widen(net, stage, 9, bad_init)
    needs = data.draw(st.sampled_from([k for k, v in GROWTH_INITS.items() if v.needs_data]))
    with pytest.raises(ValueError, match='needs data='): grow_depth(net, stage, None, needs)
    bad_scale = data.draw(st.floats(allow_nan=True).filter(lambda v: not 0 < v <= 1) | st.sampled_from([None, 'half']))
    no_data = data.draw(st.sampled_from([k for k, v in GROWTH_INITS.items() if not v.needs_data]))
    with pytest.raises(ValueError, match=r'copy_scale must be a number in \(0, 1\]'):
        grow_depth(net, stage, None, no_data, copy_scale=bad_scale)


def fixed_net(shortcut='A'):
    torch.manual_seed(0)
    return warmed_up(ResNet((2, 2, 2), (4, 8, 8), num_classes=5, shortcut=shortcut), 0).eval()


@pytest.mark.parametrize('shortcut', ['A', 'B'])
def test_non_preserving_inits_change_the_function(shortcut):
    net, x = fixed_net(shortcut), torch.randn(8, 3, 8, 8)
    assert function_gap(net, grow_depth(net, 1, init='random', generator=0), x, relative=True) > 1e-2
    assert function_gap(net, widen(net, 1, 12, 'random', generator=0), x, relative=True) > 1e-2
    noisy = function_gap(net, widen(net, 1, 12, noise=0.01, generator=0), x, relative=True)
    assert 1e-6 < noisy < 0.2


def test_dils_is_close_but_not_exact():
    net, x = fixed_net(), torch.randn(16, 3, 8, 8)
    for init in ('dils_analytic', 'dils_approx'):
        grown = grow_depth(net, 1, 1, init, data=x, generator=0)
        for mode in MODES:
            assert 0 < function_gap(net, grown, x, mode, relative=True) < 0.05, (init, mode)


@pytest.mark.parametrize('train', [True, False])
def test_zero_learns_and_both_zero_is_stuck(train):
    net, x, y = fixed_net(), torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))

    def grads(model, block):
        model.train(train); model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return {n: p.grad.abs().max().item() for n, p in block.named_parameters()}

    g = grow_depth(net, 2, 1, 'zero', generator=0)
    assert grads(g, g.stages[2][1])['bn2.weight'] > 0
    g = grow_depth(net, 2, 1, 'both_zero', generator=0)
    block, opt = g.stages[2][1], torch.optim.SGD(g.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        got = grads(g, block)
        assert [got[n] for n in ('conv1.weight', 'bn1.weight', 'bn1.bias', 'conv2.weight', 'bn2.weight')] == [0.0] * 5
        assert got['bn2.bias'] > 0
        opt.step()
    assert block.conv1.weight.abs().max() == 0 and block.conv2.weight.abs().max() == 0


def test_dtype_memory_format_and_training_flag_are_kept():
    net, x = fixed_net('B').double().train(), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    net = net.to(memory_format=torch.channels_last)
    g = widen(grow_depth(net, 1, init='net2deeper', data=x), 2, 11)
    assert g.training and {p.dtype for p in g.parameters()} == {torch.float64}
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in g.modules() if isinstance(m, torch.nn.Conv2d))
    assert function_gap(net, g, x, relative=True) < 1e-12


def test_registries_document_every_init():
    for registry in (GROWTH_INITS, WIDEN_INITS):
        for name, spec in registry.items():
            assert spec.name == name and spec.source and spec.doc
            assert spec.preserves_function in ('exact', 'approx', 'no')
    assert list(GROWTH_INITS) == ['zero', 'both_zero', 'random', 'net2deeper', 'dils_analytic', 'dils_approx', 'copy',
                                  'gaussian_bn']
    assert list(WIDEN_INITS) == ['net2net', 'net2net_noise', 'random', 'paired']
    assert {k for k, v in GROWTH_INITS.items() if v.needs_data} == {'net2deeper', 'dils_analytic', 'dils_approx'}
    assert {k for k, v in GROWTH_INITS.items() if v.edits_model} == {'copy'}
    assert not any(v.edits_model for v in WIDEN_INITS.values())
