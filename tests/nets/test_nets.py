"""Tests for diffedu.nets: shapes, closed-form embedding, conditioning contract, input checks."""
import math

import pytest
import torch

from diffedu.nets import MLP, UNet, sinusoidal_embedding


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ sinusoidal embedding
@pytest.mark.parametrize("dim", [2, 8, 31, 64])
def test_embedding_matches_closed_form(dim):
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (4, dim)
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    w = 10000.0 ** (-k / half)
    args = 1000.0 * t.double()[:, None] * w[None, :]
    torch.testing.assert_close(emb[:, :half].double(), torch.cos(args), atol=2e-4, rtol=0)
    torch.testing.assert_close(emb[:, half:2 * half].double(), torch.sin(args), atol=2e-4, rtol=0)
    if dim % 2:
        assert torch.all(emb[:, -1] == 0)


def test_embedding_unit_pairs_and_t0():
    t = torch.rand(16, generator=torch.Generator().manual_seed(0))
    emb = sinusoidal_embedding(t, 32)
    torch.testing.assert_close(emb[:, :16] ** 2 + emb[:, 16:] ** 2, torch.ones(16, 16))
    e0 = sinusoidal_embedding(torch.zeros(1), 32)
    torch.testing.assert_close(e0, torch.cat([torch.ones(1, 16), torch.zeros(1, 16)], 1))


def test_embedding_follows_dtype():
    assert sinusoidal_embedding(torch.rand(3, dtype=torch.float64), 8).dtype == torch.float64


def test_embedding_bad_input():
    with pytest.raises(TypeError, match="t"):
        sinusoidal_embedding(torch.tensor([1, 2]), 8)
    with pytest.raises(ValueError, match="t"):
        sinusoidal_embedding(torch.rand(2, 2), 8)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(torch.rand(2), 1)
    with pytest.raises(TypeError, match="t"):
        sinusoidal_embedding([0.1], 8)


# ------------------------------------------------------------------ MLP
@pytest.mark.parametrize("dim,batch", [(2, 1), (2, 7), (5, 3)])
def test_mlp_shape(dim, batch):
    net = MLP(dim=dim, hidden=16, depth=2)
    x = torch.randn(batch, dim)
    assert net(x, torch.rand(batch)).shape == x.shape


def test_mlp_depth_counts_hidden_layers():
    net = MLP(dim=2, hidden=16, depth=3)
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4  # 3 hidden layers + output
    assert all(m.out_features == 16 for m in linears[:-1])


def test_mlp_scalar_time_broadcasts():
    torch.manual_seed(0)
    net = MLP(hidden=16)
    x = torch.randn(4, 2)
    full = net(x, torch.full((4,), 0.3))
    torch.testing.assert_close(net(x, 0.3), full)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), full)


def test_mlp_depends_on_time_and_is_batch_independent():
    torch.manual_seed(0)
    net = MLP(hidden=16)
    x = torch.randn(6, 2)
    t = torch.rand(6)
    out = net(x, t)
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))
    torch.testing.assert_close(net(x[:2], t[:2]), out[:2])


def test_mlp_class_conditioning_and_null_label():
    torch.manual_seed(0)
    net = MLP(hidden=16, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    null = torch.full((4,), 3)
    torch.testing.assert_close(net(x, t), net(x, t, null))  # cond=None is the null label
    a = net(x, t, torch.zeros(4, dtype=torch.long))
    b = net(x, t, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)
    assert net.class_embed.num_embeddings == 4


def test_mlp_gradients_reach_every_parameter():
    net = MLP(hidden=16, num_classes=2)
    net(torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_mlp_bad_input():
    net = MLP(hidden=8)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(4, 2, 1), torch.rand(4))
    with pytest.raises(TypeError, match="x"):
        net(torch.ones(4, 2, dtype=torch.long), torch.rand(4))
    with pytest.raises(TypeError, match="t"):
        net(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match="t"):
        net(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(4, 2), torch.rand(4), torch.zeros(4, dtype=torch.long))
    cnet = MLP(hidden=8, num_classes=3)
    with pytest.raises(TypeError, match="cond"):
        cnet(torch.randn(4, 2), torch.rand(4), torch.zeros(4))
    with pytest.raises(ValueError, match="cond"):
        cnet(torch.randn(4, 2), torch.rand(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="cond"):
        cnet(torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="cond"):
        cnet(torch.randn(4, 2), torch.rand(4), torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="depth"):
        MLP(depth=0)
    with pytest.raises(TypeError, match="num_classes"):
        MLP(num_classes=2.0)


# ------------------------------------------------------------------ U-Net
@pytest.mark.parametrize(
    "channels,size,mults,attention",
    [(1, 8, (1, 2), False), (1, 16, (1, 2, 2), True), (1, 28, (1, 2, 2), False), (3, 32, (1, 2, 2, 2), (2,))],
)
def test_unet_shapes(channels, size, mults, attention):
    torch.manual_seed(0)
    net = UNet(in_channels=channels, base=8, channel_mults=mults, attention=attention)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.rand(2)).shape == x.shape


def test_unet_non_square_and_out_channels():
    net = UNet(in_channels=1, base=8, channel_mults=(1, 2), out_channels=2)
    assert net(torch.randn(2, 1, 8, 12), 0.5).shape == (2, 2, 8, 12)


def test_unet_attention_levels():
    assert UNet(base=8, channel_mults=(1, 2, 2), attention=True).attention_levels == (2,)
    assert UNet(base=8, channel_mults=(1, 2, 2), attention=False).attention_levels == ()
    assert UNet(base=8, channel_mults=(1, 2, 2), attention=[1, 2]).attention_levels == (1, 2)
    with pytest.raises(ValueError, match="attention"):
        UNet(base=8, channel_mults=(1, 2), attention=[5])


def test_unet_conditioning_time_and_batch_independence():
    torch.manual_seed(0)
    net = UNet(base=8, channel_mults=(1, 2), num_classes=10).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    labels = torch.tensor([0, 5, 9])
    out = net(x, t, labels)
    torch.testing.assert_close(net(x[:1], t[:1], labels[:1]), out[:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((3,), 10)))
    assert not torch.allclose(net(x, t, torch.zeros(3, dtype=torch.long)), net(x, t, torch.ones(3, dtype=torch.long)))
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))


def test_unet_gradients_reach_every_parameter():
    net = UNet(base=8, channel_mults=(1, 2), attention=True, num_classes=2)
    net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 2])).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_unet_bad_input():
    net = UNet(base=8, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(len\\(channel_mults\\)-1\\) = 4"):
        net(torch.randn(1, 1, 10, 10), 0.5)
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(1, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(1, 8, 8), 0.5)
    with pytest.raises(ValueError, match="t"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(2, 1, 8, 8), 0.5, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)


def test_unet_dropout_active_only_in_train_mode():
    torch.manual_seed(0)
    net = UNet(base=8, channel_mults=(1, 2), dropout=0.5)
    x = torch.randn(2, 1, 8, 8)
    net.eval()
    torch.testing.assert_close(net(x, 0.5), net(x, 0.5))
    net.train()
    assert not torch.allclose(net(x, 0.5), net(x, 0.5))


def test_nets_follow_input_dtype():
    net = MLP(hidden=8).double()
    assert net(torch.randn(3, 2, dtype=torch.float64), 0.2).dtype == torch.float64
    assert math.isfinite(float(net(torch.randn(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)).detach().sum()))


def test_mlp_out_dim_makes_other_heads():
    torch.manual_seed(0)
    clf = MLP(dim=2, out_dim=3, hidden=16, depth=2)          # K logits of a noisy classifier (monograph §8.1)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert clf(x, t).shape == (5, 3) and clf.out_dim == 3
    assert clf.net[-1].out_features == 3
    assert MLP(dim=4, hidden=8).out_dim == 4                 # default: shaped like x
    torch.testing.assert_close(clf(x[:2], t[:2]), clf(x, t)[:2])
    with pytest.raises(ValueError, match="out_dim"):
        MLP(out_dim=0)
    with pytest.raises(TypeError, match="out_dim"):
        MLP(out_dim=2.0)


def test_mlp_without_time_is_a_function_of_x_alone():
    torch.manual_seed(0)
    energy = MLP(dim=2, hidden=16, depth=2, time_dim=0, out_dim=1)   # E(x) or s(x) of a fixed density
    x = torch.randn(6, 2, requires_grad=True)
    out = energy(x)
    assert out.shape == (6, 1) and energy.net[0].in_features == 2
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="t"):
        energy(x, torch.rand(6))
    with pytest.raises(TypeError, match="t"):
        MLP(dim=2, hidden=8)(torch.randn(3, 2))              # a time-conditioned net needs t
    with pytest.raises(ValueError, match="time_dim"):
        MLP(time_dim=1)
    with pytest.raises(ValueError, match="num_classes"):
        MLP(time_dim=0, num_classes=3)
