"""Embedding and reranker losses against hand-worked numbers.

InfoNCE, temperature 1, q = docs = [[1, 0], [0, 1]] (unit vectors), so sim = I:
    each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.313262
    with a hard negative d2 = [0, 1]: row 0 sims [1, 0, 0] -> log(1 + 2e^-1) = 0.551445
                                      row 1 sims [0, 1, 1] -> log(1 + 2e) - 1 = 0.862014; mean 0.706729
Cosine regression, q = [[1, 0], [1, 0]], positives with cos [0.5, 0.1], scores [1, 0]:
    CoSENT (scale 20): only the pair s_0 > s_1 counts: log(1 + e^(20 (0.1 - 0.5))) = log(1 + e^-8) = 0.000335
    MSE: ((0.5 - 1)^2 + (0.1 - 0)^2) / 2 = 0.13
Matryoshka over InfoNCE (temperature 1), q = docs = [[1, 1], [1, -1]], dims [2, 1], weights [1, 3]:
    dim 2: normalised rows are orthogonal, sim = I -> 0.313262; dim 1: every cosine is 1 -> log 2 = 0.693147
    weighted mean (0.313262 + 3 * 0.693147) / 4 = 0.598176
Listwise softmax, scores [[2, 0, 0]], labels [[1, 0, 0]]: log(1 + 2e^-2) = 0.239545
Pointwise BCE, scores [[0, 2]], labels [[1, 0]]: (log 2 + log(1 + e^2)) / 2 = (0.693147 + 2.126928) / 2 = 1.410038
"""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_swift.losses.embedding import CosineRegression, InfoNCE, ListwiseSoftmax, Matryoshka, PointwiseBCE


def close(value, expected):
    assert_close(value, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_info_nce_in_batch_and_hard_negatives():
    eye = torch.eye(2)
    loss, metrics = InfoNCE(temperature=1.0)(eye, eye, torch.arange(2))
    close(loss, 0.313262)
    close(metrics["accuracy"], 1.0)
    docs = torch.cat([eye, torch.tensor([[0.0, 1.0]])])
    loss, _ = InfoNCE(temperature=1.0)(eye * 3, docs, torch.arange(2))  # scale does not matter (cosines)
    close(loss, (0.551445 + 0.862014) / 2)


def test_info_nce_temperature_sharpens():
    eye = torch.eye(2)
    loss, _ = InfoNCE(temperature=0.5)(eye, eye, torch.arange(2))
    close(loss, math.log(1 + math.exp(-2)))


def test_cosine_regression_cosent_and_mse():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    pos = torch.tensor([[0.5, math.sqrt(0.75)], [0.1, math.sqrt(0.99)]])
    scores = torch.tensor([1.0, 0.0])
    close(CosineRegression()(q, pos, torch.arange(2), scores)[0], math.log1p(math.exp(-8)))
    close(CosineRegression(mode="mse")(q, pos, torch.arange(2), scores)[0], 0.13)
    with pytest.raises(ValueError, match="score"):
        CosineRegression()(q, pos, torch.arange(2))


def test_matryoshka_weighted_over_prefixes():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    loss, metrics = Matryoshka(InfoNCE(temperature=1.0), dims=[2, 1], weights=[1, 3])(x, x, torch.arange(2))
    close(loss, (0.313262 + 3 * math.log(2)) / 4)
    close(metrics["loss@2"], 0.313262)
    with pytest.raises(ValueError, match="exceed"):
        Matryoshka(InfoNCE(), dims=[4])(x, x, torch.arange(2))


def test_reranker_losses():
    close(ListwiseSoftmax()(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))[0], 0.239545)
    loss, metrics = PointwiseBCE()(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
    close(loss, 1.410038)
    close(metrics["accuracy"], 0.0)
