"""Where is an event visible? Ranking metrics and small probes on fixed inputs.

``roc_auc`` and ``average_precision`` score how well a number ranks the steps that hold an
event (a kill, a lost life) above the others; 0.5 AUC and the base rate AP are chance.
``probe_scores`` fits a small MLP classifier (standardised inputs, one hidden layer, Adam on
binary cross-entropy) on training inputs and scores held-out ones, so the same question can
be asked of pixels, of tokenizer latents and of the agent's features: if a probe on pixels
finds the event and one on latents does not, the tokenizer dropped it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); nan without both classes."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each group of tied scores' first member
    ranks = (first + (counts + 1) / 2)[group]  # every member of a tie gets the group's average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean precision at the rank of each positive (highest scores first); nan without positives."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if not labels.any():
        return float("nan")
    hits = labels[np.argsort(-scores, kind="mergesort")]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, *, hidden: int = 128, steps: int = 600,
              batch: int = 256, lr: float = 1e-3, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit an MLP probe on (x_train (N, F), y_train (N,) in {0, 1}) -> a function from inputs
    (M, F) to logits (M,) (no gradient). Inputs may be uint8 (pixels): batches are converted
    to float as they are drawn. Binary cross-entropy makes sigmoid(logit) a probability that
    matches the training rate on average (what `kills_per_step` in evaluation relies on)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sample = x_train[torch.randperm(len(x_train), generator=gen)[:4096]].float()
    mean, std = sample.mean(0), sample.std(0).clamp_min(1e-3)
    net = nn.Sequential(nn.Linear(x_train.shape[1], hidden), nn.SiLU(), nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    y_train = y_train.float()
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (batch,), generator=gen)
        logit = net((x_train[idx].float() - mean) / std).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.requires_grad_(False)

    @torch.no_grad()
    def logits(x: torch.Tensor) -> torch.Tensor:
        m, sd = mean.to(x.device), std.to(x.device)
        net.to(x.device)
        return torch.cat([net((x[i : i + 1024].float() - m) / sd).squeeze(-1) for i in range(0, len(x), 1024)])

    return logits


def probe_scores(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, *, hidden: int = 128,
                 steps: int = 600, batch: int = 256, lr: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Fit an MLP probe on (x_train (N, F), y_train (N,) in {0, 1}); logits for x_val (M,)."""
    probe = fit_probe(x_train, y_train, hidden=hidden, steps=steps, batch=batch, lr=lr, seed=seed)
    return probe(x_val).cpu().numpy()
