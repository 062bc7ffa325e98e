"""Weighted k-NN classification on frozen features (Wu et al. 2018), the monitor of self-supervised training: each
query's k most similar bank features vote for their class with weight exp(similarity / temperature). Queries go in
chunks, so memory stays at chunk x bank size whatever the split's size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reprocls.engine.selfsup.methods import embed


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, *,
               k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """(queries, num_classes) class scores; features are L2-normalised here, so cosine similarity is a dot product."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(queries), chunk):
        query = F.normalize(queries[start:start + chunk].float(), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_accuracy(queries: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                 num_classes: int, *, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Top-1 accuracy of the weighted k-NN vote."""
    scores = knn_scores(queries, bank, bank_labels, num_classes, k=k, temperature=temperature, chunk=chunk)
    return (scores.argmax(dim=1) == labels).float().mean().item()


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone embeddings (forward_head with pre_logits) and labels of every batch, in eval mode, on the
    CPU; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for images, targets in loader:
            features.append(embed(model, images.to(device)).float().cpu())
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)
