"""The weighted k-NN monitor equals lightly's knn_predict, is the same in any chunk size, and separates real classes
on real features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reprocls import create_model
from reprocls.engine.selfsup.knn import extract_features, knn_accuracy, knn_scores

lightly_knn = pytest.importorskip("lightly.utils.benchmarking")


def features(n: int, dim: int = 32, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=generator), labels


@pytest.mark.parametrize("k, temperature", [(20, 0.1), (5, 0.5)])
def test_the_vote_equals_lightlys_knn_predict(k: int, temperature: float) -> None:
    bank, bank_labels = features(400)
    queries, _ = features(64, seed=1)
    ours = knn_scores(queries, bank, bank_labels, 5, k=k, temperature=temperature).argmax(dim=1)
    theirs = lightly_knn.knn_predict(F.normalize(queries, dim=1), F.normalize(bank, dim=1).T, bank_labels, 5,
                                     knn_k=k, knn_t=temperature)[:, 0]
    assert torch.equal(ours, theirs)
    flat = knn_scores(queries, bank, bank_labels, 5, k=k, temperature=100.0).argmax(dim=1)
    assert not torch.equal(flat, ours) or k == 5  # the temperature changes the vote on these overlapping classes


def test_chunks_change_nothing_and_k_is_capped_at_the_bank() -> None:
    everything, all_labels = features(430)  # one draw: queries and bank share the class centres
    bank, bank_labels, queries, labels = everything[:300], all_labels[:300], everything[300:], all_labels[300:]
    whole = knn_scores(queries, bank, bank_labels, 5, k=50, chunk=1000)
    assert torch.allclose(knn_scores(queries, bank, bank_labels, 5, k=50, chunk=7), whole)
    assert knn_scores(queries, bank[:10], bank_labels[:10], 5, k=200).shape == (130, 5)
    assert knn_accuracy(queries, labels, bank, bank_labels, 5, k=50) > 0.6  # chance is 0.2
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_scores(queries, bank, bank_labels, 5, temperature=0)


def test_features_come_from_the_pooled_embedding_in_eval_mode(fmnist_splits) -> None:
    model = create_model("resnet20", num_classes=10, in_chans=1)
    model.train()
    images, labels = fmnist_splits.train.images[:64].float() / 255, fmnist_splits.train.labels[:64]
    before = [b.clone() for b in model.buffers()]
    got, got_labels = extract_features(model, [(images[:32], labels[:32]), (images[32:], labels[32:])],
                                       torch.device("cpu"))
    assert got.shape == (64, model.num_features) and torch.equal(got_labels, labels)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # eval mode inside
    model.eval()
    expected = model.forward_head(model.forward_features(images), pre_logits=True)
    assert torch.allclose(got, expected, atol=1e-5)
