"""Tests of the theory notebook's reusable checks: function_gap, insertion_points, gradient_norms, train_steps."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from incres.growth import grow_depth
from incres.resnet import ResNet, resnet
from incres.testing import assert_same_state, random_images
from incres.theory import MODES, function_gap, gradient_norms, insertion_points, train_steps


def _net(seed=0, stage_depths=(1, 1), widths=(2, 4)):
    torch.manual_seed(seed)
    return ResNet(stage_depths, widths, in_channels=3, num_classes=5)


# function_gap ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
def test_gap_is_zero_for_a_copy(mode):
    net = _net()
    assert function_gap(net, copy.deepcopy(net), random_images(8, seed=1), mode) == 0.0


@pytest.mark.parametrize('mode', MODES)
def test_gap_is_large_for_different_networks_and_symmetric(mode):
    a, b, x = _net(0), _net(1), random_images(8, seed=1)
    gap = function_gap(a, b, x, mode)
    assert gap > 1e-2
    assert function_gap(b, a, x, mode) == gap


@pytest.mark.parametrize('mode', MODES)
def test_gap_measures_a_known_change_of_the_logits(mode):
    a = _net()
    b = copy.deepcopy(a)
    with torch.no_grad(): b.fc.bias[3] += 0.125  # shifts logit 3 of every sample by exactly this much
    assert function_gap(a, b, random_images(8, seed=1), mode) == pytest.approx(0.125, abs=1e-6)


def test_train_mode_leaves_both_models_untouched():
    a, b, x = _net(0).eval(), _net(1).train(), random_images(8, seed=1)
    sa, sb = copy.deepcopy(a), copy.deepcopy(b)
    function_gap(a, b, x, 'train')
    assert_same_state(a, sa); assert_same_state(b, sb)  # running statistics and num_batches_tracked unchanged
    assert (a.training, b.training) == (False, True)  # modes unchanged
    assert all(m.training is False for m in a.modules()) and all(m.training for m in b.modules())


def test_eval_and_train_mode_differ():
    "Train mode really uses batch statistics: a fresh BN has running stats 0/1, which the batch does not have."
    a, b, x = _net(0), _net(0), random_images(8, seed=1)
    with torch.no_grad(): b.stem[1].running_mean += 1.0
    assert function_gap(a, b, x, 'eval') > 1e-3
    assert function_gap(a, b, x, 'train') == 0.0  # running statistics are not used in train mode


def test_gap_rejects_bad_arguments():
    net, x = _net(), random_images(8, seed=1)
    with pytest.raises(ValueError, match="'eval', 'train'"): function_gap(net, net, x, 'inference')
    other = ResNet((1, 1), (2, 4), in_channels=3, num_classes=7)
    with pytest.raises(ValueError, match='shape'): function_gap(net, other, x)


# insertion_points -----------------------------------------------------------------------------------------------

def test_insertion_points_of_resnet14():
    assert insertion_points(resnet(14, width=4)) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]


@settings(max_examples=25)
@given(stage_depths=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_insertion_points_enumerate_exactly_the_valid_positions(stage_depths):
    widths = [2 * 2 ** i for i in range(len(stage_depths))]
    net = ResNet(stage_depths, widths, num_classes=3)
    expected = [(0, i) for i in range(stage_depths[0] + 1)]
    expected += [(s, i) for s, n in enumerate(stage_depths) if s > 0 for i in range(1, n + 1)]
    assert insertion_points(net) == expected
    assert len(set(expected)) == len(expected)


def test_insertion_points_are_where_grow_depth_accepts_a_block_and_keeps_the_function():
    net, x = _net(stage_depths=(2, 1), widths=(2, 4)), random_images(8, seed=1)
    valid = insertion_points(net)
    for s, stage in enumerate(net.stages):
        for i in range(0, len(stage) + 1):
            if (s, i) in valid:
                assert function_gap(net, grow_depth(net, s, i, 'zero'), x, 'train') == 0.0
            else:
                with pytest.raises(ValueError): grow_depth(net, s, i, 'zero')


def test_insertion_points_follow_the_blocks_after_growth():
    net = grow_depth(_net(), 1, 1, 'zero')
    assert insertion_points(net) == [(0, 0), (0, 1), (1, 1), (1, 2)]


# gradient_norms -------------------------------------------------------------------------------------------------

def test_gradient_norms_of_a_block_with_zero_last_gamma():
    "γ₂ = 0 cuts the gradient to everything before BN₂; γ₂ and β₂ still get gradient."
    net, x, y = _net(), random_images(8, seed=1), torch.arange(8) % 5
    with torch.no_grad(): net.stages[1][0].bn2.weight.zero_()
    for mode in MODES:
        norms = gradient_norms(net, x, y, 1, 0, mode=mode)
        assert list(norms) == ['conv1.weight', 'bn1.weight', 'bn1.bias', 'conv2.weight', 'bn2.weight', 'bn2.bias']
        assert norms['conv1.weight'] == norms['bn1.weight'] == norms['bn1.bias'] == norms['conv2.weight'] == 0.0
        assert norms['bn2.weight'] > 0 and norms['bn2.bias'] > 0


def test_gradient_norms_match_autograd_and_leave_the_model_alone():
    net, x, y = _net(), random_images(8, seed=1), torch.arange(8) % 5
    before = copy.deepcopy(net)
    norms = gradient_norms(net, x, y, 0, 0)
    ref = copy.deepcopy(net).train()
    F.cross_entropy(ref(x), y).backward()
    expected = {n: p.grad.norm().item() for n, p in ref.stages[0][0].named_parameters()}
    assert norms == pytest.approx(expected, rel=1e-6)
    assert_same_state(net, before)
    assert all(p.grad is None for p in net.parameters())


def test_gradient_norms_reject_a_missing_block():
    net, x, y = _net(), random_images(8, seed=1), torch.arange(8) % 5
    with pytest.raises(ValueError, match=r'\(1, 0\)'): gradient_norms(net, x, y, 1, 1)
    with pytest.raises(ValueError, match="'eval', 'train'"): gradient_norms(net, x, y, 0, 0, mode='both')


# train_steps ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_train_steps_reduces_the_loss_and_is_reproducible(optimizer):
    x, y = random_images(16, seed=1), torch.arange(16) % 5
    curves = [train_steps(_net(), x, y, 25, lr=0.05 if optimizer == 'sgd' else 0.01, optimizer=optimizer)
              for _ in range(2)]
    assert curves[0] == curves[1]
    assert len(curves[0]) == 26 and curves[0][-1] < 0.7 * curves[0][0]


def test_train_steps_accepts_soft_targets_and_cosine_decay():
    x = random_images(16, seed=1)
    y = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(2)), 1)
    curve = train_steps(_net(), x, y, 20, lr=0.01, optimizer='adam', cosine=True)
    entropy = -(y * y.log()).sum(1).mean().item()
    assert all(loss >= entropy - 1e-6 for loss in curve)  # cross-entropy with soft targets is bounded by their entropy
    assert curve[-1] < curve[0]


def test_train_steps_zero_steps_is_just_the_loss():
    net, x, y = _net(), random_images(8, seed=1), torch.arange(8) % 5
    params = [p.detach().clone() for p in net.parameters()]
    (loss,) = train_steps(net, x, y, 0)
    assert loss == pytest.approx(F.cross_entropy(copy.deepcopy(net).train()(x), y).item(), rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(params, net.parameters()))


def test_train_steps_rejects_bad_arguments():
    net, x, y = _net(), random_images(8, seed=1), torch.arange(8) % 5
    with pytest.raises(ValueError, match="'sgd', 'adam'"): train_steps(net, x, y, 1, optimizer='lbfgs')
    with pytest.raises(ValueError, match='steps'): train_steps(net, x, y, -1)
