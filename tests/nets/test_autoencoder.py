"""The KL-regularised autoencoder: shapes, the loss, a few steps of training reduce it."""
import pytest
import torch

from diffedu import data, engine
from diffedu.nets import Autoencoder, autoencoder_loss


@pytest.mark.parametrize("size, latent", [(8, 2), (28, 4)])
def test_shapes(size, latent):
    ae = Autoencoder(1, latent_channels=latent, base=8)
    x = torch.rand(3, 1, size, size) * 2 - 1
    mean, log_var = ae.encode(x)
    assert mean.shape == log_var.shape == (3, latent, size // 4, size // 4)
    out = ae(x, generator=torch.Generator().manual_seed(0))
    assert out.recon.shape == x.shape and out.recon.abs().max() <= 1.0
    assert autoencoder_loss(ae, x).shape == (3,)


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    x = data.load_digits()
    ae = Autoencoder(1, latent_channels=2, base=8)
    res = engine.fit(ae, lambda m, b, g: autoencoder_loss(m, b, generator=g), data.batches(x, 64, generator=0),
                     steps=60, lr=3e-3, seed=0, progress=False, device="cpu")
    assert res.losses[-10:].mean() < 0.6 * res.losses[:5].mean()


def test_bad_inputs():
    ae = Autoencoder(1, 2, base=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.encode(torch.zeros(2, 1, 10, 10))
    with pytest.raises(ValueError, match="z: expected 2 channels"):
        ae.decode(torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="kl_weight"):
        autoencoder_loss(ae, torch.zeros(2, 1, 8, 8), kl_weight=-1.0)
    with pytest.raises(TypeError, match="ae"):
        autoencoder_loss(torch.nn.Identity(), torch.zeros(2, 1, 8, 8))
