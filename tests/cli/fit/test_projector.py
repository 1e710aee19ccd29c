"""Tests of the projector: architecture, checkpoints loadable without pickle, PCA start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from timevis_cli.errors import InputError
from timevis_cli.fit.projector import EMBEDDING_DIM, Projector


def linear_sizes(module: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_architecture_mirrors(depth):
    projector = Projector(12, hidden=16, depth=depth)
    encoder = linear_sizes(projector.encoder)
    decoder = linear_sizes(projector.decoder)
    assert encoder == [(12, 16)] + [(16, 16)] * depth + [(16, EMBEDDING_DIM)]
    assert decoder == [(EMBEDDING_DIM, 16)] + [(16, 16)] * depth + [(16, 12)]
    for half in (projector.encoder, projector.decoder):
        kinds = [type(m) for m in half]
        assert kinds[-1] is nn.Linear
        assert kinds == [nn.Linear, nn.ReLU] * (depth + 1) + [nn.Linear]


def test_defaults_follow_the_method():
    assert Projector(512).config() == {"input_dim": 512, "hidden": 256, "depth": 3, "epochs": 0}


def test_forward_is_encode_then_decode():
    torch.manual_seed(0)
    projector = Projector(7, hidden=8, depth=1)
    x = torch.randn(5, 7)
    embedding, reconstruction = projector(x)
    assert embedding.shape == (5, 2) and reconstruction.shape == (5, 7)
    assert torch.equal(embedding, projector.encode(x))
    assert torch.equal(reconstruction, projector.decode(embedding))


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    projector = Projector(9, hidden=10, depth=2)
    path = tmp_path / "projector.pt"
    torch.save(projector.checkpoint(), path)
    loaded = Projector.from_checkpoint(torch.load(path, weights_only=True))
    assert loaded.config() == projector.config()
    x = torch.randn(4, 9)
    for ours, theirs in zip(projector(x), loaded(x), strict=True):
        assert torch.equal(ours, theirs)


def test_from_config_round_trip_and_refusals():
    assert Projector.from_config({"input_dim": 3, "hidden": 4, "depth": 0}).config() == {
        "input_dim": 3,
        "hidden": 4,
        "depth": 0,
        "epochs": 0,  # a checkpoint from before per-epoch decoder biases still loads
    }
    with_biases = Projector(3, hidden=4, depth=0, epochs=2)
    assert Projector.from_checkpoint(with_biases.checkpoint()).epoch_bias.shape == (2, 4)
    with pytest.raises(InputError, match="unknown keys"):
        Projector.from_config({"input_dim": 3, "width": 4})
    with pytest.raises(InputError, match="lacks"):
        Projector.from_config({"hidden": 4})
    with pytest.raises(InputError, match="state_dict"):
        Projector.from_checkpoint({"config": {"input_dim": 3}})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"input_dim": 0}, "input_dim"), ({"input_dim": 3, "hidden": 0}, "hidden"),
     ({"input_dim": 3, "depth": -1}, "depth"), ({"input_dim": 3.0}, "input_dim"),
     ({"input_dim": 3, "epochs": -1}, "epochs")],
)  # fmt: skip
def test_bad_sizes_are_refused(kwargs, name):
    with pytest.raises(InputError, match=name):
        Projector(**kwargs)


def test_init_pca_starts_near_the_principal_coordinates():
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(400, 2, generator=generator) * torch.tensor([3.0, 1.0])
    x = latent @ torch.randn(2, 16, generator=generator) + 0.01 * torch.randn(
        400, 16, generator=generator
    )
    torch.manual_seed(0)
    projector = Projector(16, hidden=64, depth=1)
    target = projector.init_pca(x, scale=2.0)
    assert target[:, 0].std().item() == pytest.approx(2.0)
    with torch.no_grad():
        embedding, reconstruction = projector(x)
    residual = ((embedding.double() - target) ** 2).sum() / (target**2).sum()
    assert residual.item() < 0.05, f"relative residual {residual.item()}"
    rec_error = ((reconstruction - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert rec_error.item() < 0.2, f"relative reconstruction error {rec_error.item()}"


def test_init_pca_subsamples_with_the_generator():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    first = Projector(4, hidden=8, depth=0)
    second = Projector.from_checkpoint(first.checkpoint())
    a = first.init_pca(x, max_samples=20, generator=torch.Generator().manual_seed(1))
    b = second.init_pca(x, max_samples=20, generator=torch.Generator().manual_seed(1))
    assert a.shape == (20, 2) and torch.equal(a, b)
    with pytest.raises(InputError, match="features"):
        first.init_pca(torch.zeros(10, 5))
