"""Property tests of the growable ResNet: shapes and architecture facts over random configurations."""
import torch
from hypothesis import given, strategies as st

from incres.resnet import ResNet, n_params, resnet


@given(stage_depths=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       width=st.integers(1, 6), in_channels=st.sampled_from([1, 3]), batch=st.integers(1, 3),
       shortcut=st.sampled_from(['A', 'B']), size=st.sampled_from([8, 11, 16]))
def test_shapes_and_depth(stage_depths, width, in_channels, batch, shortcut, size):
    widths = [width * 2 ** i for i in range(len(stage_depths))]
    net = ResNet(stage_depths, widths, in_channels=in_channels, num_classes=7, shortcut=shortcut).eval()
    assert net.stage_depths == tuple(stage_depths)
    assert net.widths == tuple(widths)
    assert net.depth == 2 + 2 * sum(stage_depths)
    out = net(torch.randn(batch, in_channels, size, size))
    assert out.shape == (batch, 7) and torch.isfinite(out).all()


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net, x = resnet(8).eval(), torch.randn(4, 3, 32, 32)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)


def test_parameter_counts_of_the_paper():
    assert [n_params(resnet(d)) for d in (20, 32, 44, 56, 110)] == [269_722, 464_154, 658_586, 853_018, 1_727_962]
