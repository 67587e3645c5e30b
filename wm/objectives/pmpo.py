"""PMPO policy loss (Abdolmaleki et al. 2024, as used by Dreamer 4 for imagination RL).

Only the *sign* of each advantage is used: the states-actions with positive advantage form
D+, the rest D-. The loss raises log-probability on D+ and lowers it on D-, each set
averaged on its own and weighted alpha vs (1 - alpha) (alpha = 0.5: both count equally,
whatever their sizes), plus beta times the reverse KL  KL[pi || pi_prior]  to the frozen
behaviour-cloned prior, which keeps the policy near behaviour the world model has seen:

  L = -(alpha / |D+|) sum_{D+} ln pi(a|s) + ((1 - alpha) / |D-|) sum_{D-} ln pi(a|s)
      + (beta / N) sum_s KL[pi(.|s) || pi_prior(.|s)]
"""

from __future__ import annotations

import torch


def reverse_kl(logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """KL[pi || prior] per state (...), from logits (..., A)."""
    logp = logits.float().log_softmax(-1)
    logq = prior_logits.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def pmpo_loss(logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, prior_logits: torch.Tensor,
              alpha: float = 0.5, beta: float = 0.3, mask: torch.Tensor | None = None,
              counts: tuple[float, float, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """logits (..., A), actions/advantages (...), prior_logits (..., A); mask (...) = valid steps.
    ``counts`` = (|D+|, |D-|, valid) to divide the sums by instead of this batch's own counts:
    under data parallelism the counts of the whole batch over all ranks (the learner scales the
    loss by the number of ranks, so averaged gradients equal the whole batch's)."""
    logp_all = logits.float().log_softmax(-1)
    logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
    valid = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.bool()
    pos = (advantages.detach() > 0) & valid
    neg = (advantages.detach() <= 0) & valid
    zero = logp.sum() * 0
    n_pos, n_neg, n_valid = counts if counts is not None else (pos.sum(), neg.sum(), valid.sum().clamp_min(1))
    pos_term = -(logp * pos).sum() / n_pos if n_pos > 0 else zero
    neg_term = (logp * neg).sum() / n_neg if n_neg > 0 else zero
    kl = (reverse_kl(logits, prior_logits) * valid).sum() / n_valid
    loss = alpha * pos_term + (1 - alpha) * neg_term + beta * kl
    entropy = (-(logp_all.exp() * logp_all).sum(-1) * valid).sum() / valid.sum().clamp_min(1)
    logs = {"pmpo/pos_frac": pos.float().sum().item() / max(valid.sum().item(), 1), "pmpo/kl": kl.item(),
            "pmpo/entropy": entropy.item()}
    return loss, logs
