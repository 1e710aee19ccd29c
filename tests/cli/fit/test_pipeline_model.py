"""FitModel.decoder_layers: the decoder as a chain of affine maps equals inverse_transform."""

import numpy as np
import torch

from timevis_cli.fit.pipeline import FitModel
from timevis_cli.fit.projector import Projector


def _chain(layers, y):
    h = torch.from_numpy(y).double()
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight.T + bias
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h.numpy()


def test_decoder_layers_reproduce_inverse_transform_with_epoch_biases():
    torch.manual_seed(0)
    projector = Projector(input_dim=7, hidden=16, depth=1, epochs=3)
    with torch.no_grad():
        projector.epoch_bias.normal_()
    model = FitModel(projector, torch.device("cpu"), [2, 5, 9])
    y = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    for epoch in (2, 5, 9):
        layers = model.decoder_layers(epoch)
        assert len(layers) == 3 and layers[0][0].shape == (16, 2) and layers[-1][0].shape == (7, 16)
        np.testing.assert_allclose(_chain(layers, y), model.inverse_transform(y, epoch), atol=1e-5)
    assert not np.allclose(_chain(model.decoder_layers(2), y), _chain(model.decoder_layers(5), y))


def test_decoder_layers_of_a_shared_decoder_ignore_the_epoch():
    torch.manual_seed(1)
    model = FitModel(Projector(input_dim=4, hidden=8, depth=0), torch.device("cpu"), [0, 1])
    y = np.random.default_rng(1).normal(size=(20, 2)).astype(np.float32)
    np.testing.assert_allclose(_chain(model.decoder_layers(), y), model.inverse_transform(y), atol=1e-5)
