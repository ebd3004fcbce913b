"""Latent diffusion: the scale factor, the model contract in latent space, decoded samples."""
import pytest
import torch

from diffedu import samplers
from diffedu.baselines.latent import LatentDiffusion, encode_dataset, latent_scale_factor
from diffedu.nets import Autoencoder, UNet
from diffedu.param import Denoiser, Prediction
from diffedu.schedules import VPLinear


def test_scale_factor_gives_unit_variance():
    z = 3.7 * torch.randn(200, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    c = latent_scale_factor(z)
    assert c == pytest.approx(1 / 3.7, rel=0.02)
    assert float((c * z).std()) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="zero variance"):
        latent_scale_factor(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z: expected"):
        latent_scale_factor(torch.zeros(5, dtype=torch.long))


def _model():
    torch.manual_seed(0)
    ae = Autoencoder(1, latent_channels=2, base=8).eval()
    den = Denoiser(UNet(2, base=8, channel_mults=(1,)), VPLinear(), "eps")
    z = encode_dataset(ae, torch.rand(20, 1, 8, 8) * 2 - 1)
    return LatentDiffusion(ae, den, latent_scale_factor(z), z.shape[1:]), z


def test_contract_encode_decode_and_sample():
    model, z = _model()
    assert model.schedule is model.denoiser.schedule
    zt = torch.randn(4, *model.latent_shape)
    pred = model(zt, torch.full((4,), 0.5))
    assert isinstance(pred, Prediction) and pred.x0.shape == zt.shape
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    assert torch.allclose(model.encode(x), model.scale_factor * encode_dataset(model.autoencoder, x))
    assert model.decode(model.encode(x)).shape == x.shape
    out = model.sample(5, samplers.sample_ddim, samplers.grid_uniform(4, 1.0, 1e-3), generator=torch.Generator().manual_seed(0),
                       batch_size=2)
    assert out.shape == (5, 1, 8, 8) and torch.isfinite(out).all() and out.abs().max() <= 1.0


def test_bad_arguments():
    model, z = _model()
    with pytest.raises(ValueError, match="scale_factor"):
        LatentDiffusion(model.autoencoder, model.denoiser, -1.0, z.shape[1:])
    with pytest.raises(ValueError, match="latent_shape"):
        LatentDiffusion(model.autoencoder, model.denoiser, 1.0, (3, 2, 2))
    with pytest.raises(TypeError, match="autoencoder"):
        LatentDiffusion(torch.nn.Identity(), model.denoiser, 1.0, z.shape[1:])
