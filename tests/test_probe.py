"""The linear probe matches scikit-learn's logistic regression on the same features, and chooses its weight decay
on validation, never on test."""

from __future__ import annotations

import pytest
import torch

from reprocls.engine.selfsup.probe import linear_probe

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def blobs(n: int, seed: int, dim: int = 20, classes: int = 4, noise: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=generator)  # the same classes for every split
    generator.manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + noise * torch.randn(n, dim, generator=generator), labels


def test_the_probe_scores_like_sklearns_logistic_regression() -> None:
    train, val, test = blobs(600, 1), blobs(300, 2), blobs(300, 3)
    result = linear_probe(train, val, 4, test=test)
    mean, std = train[0].mean(0), train[0].std(0) + 1e-6
    reference = sklearn_linear.LogisticRegression(max_iter=2000).fit(((train[0] - mean) / std).numpy(), train[1].numpy())
    theirs = reference.score(((test[0] - mean) / std).numpy(), test[1].numpy())
    assert result.test_accuracy == pytest.approx(theirs, abs=0.03)
    assert result.test_accuracy > 0.5  # chance is 0.25
    assert set(result.val_accuracy) == {0.0, 1e-4, 1e-3, 1e-2}


def test_the_weight_decay_is_chosen_on_validation_and_test_changes_nothing() -> None:
    train, val = blobs(400, 1), blobs(200, 2)
    with_test = linear_probe(train, val, 4, test=blobs(200, 3))
    flipped_test = blobs(200, 3)
    flipped_test = (flipped_test[0], (flipped_test[1] + 1) % 4)  # a test split whose labels are all wrong
    other = linear_probe(train, val, 4, test=flipped_test)
    assert other.weight_decay == with_test.weight_decay and other.val_accuracy == with_test.val_accuracy
    assert other.test_accuracy < 0.3 < with_test.test_accuracy
    assert with_test.val_accuracy[with_test.weight_decay] == max(with_test.val_accuracy.values())
    assert linear_probe(train, val, 4).test_accuracy is None
