"""The reward and continuation heads on frozen agent features, and how well they see events.

After joint finetuning the transformer is frozen (imagination RL never changes it), so the
heads that price imagined steps can be fitted on cached features: ``features`` runs the agent
over clips as long as an imagined episode (``rl.context + rl.horizon`` frames, so the heads see
the positions they are read at), ``draws`` noise draws of the context level each, and
``fit_heads`` trains the reward head's offset 0 (two-hot) and the continuation head (binary
cross-entropy) on them for ``steps`` Adam steps of ``batch`` rows, with the data's own event
rates (no re-weighting: a re-weighted head would be mis-calibrated). A kill is about 1 step in
45; a joint finetuning run of a few hundred steps sees too few of them for a calibrated head.

``head_metrics`` reports on held-out real latents: the ranking (ROC-AUC, average precision)
of "a kill at this step" and "a life lost at this step", the calibration (mean decoded reward
per step against the data's), and the error against the all-zero predictor.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from wm.models.agent import Agent, agent_view
from wm.models.dynamics import shift_actions
from wm.objectives.twohot import make_bins, twohot_decode, twohot_loss
from wm.probes import average_precision, roc_auc


@torch.no_grad()
def features(agent: Agent, batches: Iterable[dict[str, torch.Tensor]], ctx_noise: float, draws: int = 1
             ) -> dict[str, torch.Tensor]:
    """Agent features of every frame after the first, with the reward and continuation of the
    transition into it: ``feat`` (N, D), ``reward`` (N,), ``cont`` (N,), one row per transition
    and noise draw; and once per transition ``latents`` (M, 2, L, dz) (this frame and the one
    before) with ``kill`` (M,) (reward > 0), for probes."""
    device = next(agent.parameters()).device
    k_max = agent.dynamics.cfg.k_max
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("feat", "reward", "cont", "latents", "kill")}
    for batch in batches:
        z = batch["latents"].to(device).float()
        prev = shift_actions(batch["actions"].to(device))
        task = torch.zeros(len(z), dtype=torch.long, device=device)
        for _ in range(draws):  # feature rows: draw-major within each batch
            noisy, tau, d = agent_view(z, ctx_noise, k_max)
            _, feat = agent(noisy, tau, d, prev, task)
            out["feat"].append(feat[:, 1:].flatten(0, 1).float().cpu())
            out["reward"].append(batch["rewards"][:, :-1].flatten().float())
            out["cont"].append(batch["continues"][:, :-1].flatten().float())
        # once per transition (not per draw), for probes on the latents themselves
        out["latents"].append(torch.stack([z[:, 1:], z[:, :-1]], 2).flatten(0, 1).cpu())
        out["kill"].append(batch["rewards"][:, :-1].flatten() > 0)
    return {k: torch.cat(v) for k, v in out.items()}


def fit_heads(agent: Agent, data: dict[str, torch.Tensor], steps: int, batch: int = 1024, lr: float = 1e-3,
              seed: int = 0) -> dict[str, float]:
    """Train the reward head (offset 0) and the continuation head on cached features."""
    device = next(agent.parameters()).device
    bins = make_bins(agent.bins).to(device)
    params = [*agent.reward_head.parameters(), *agent.cont_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    feat, reward, cont = data["feat"], data["reward"], data["cont"]
    logs: dict[str, float] = {}
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, len(feat), (batch,), generator=gen)
            f = feat[idx].to(device)
            rl = twohot_loss(agent.reward_logits(f)[:, 0], reward[idx].to(device), bins).mean()
            cl = F.binary_cross_entropy_with_logits(agent.cont_logit(f), cont[idx].to(device))
            opt.zero_grad(set_to_none=True)
            (rl + cl).backward()
            opt.step()
            logs = {"heads/reward_loss": rl.item(), "heads/cont_loss": cl.item()}
    return logs


@torch.no_grad()
def head_metrics(agent: Agent, data: dict[str, torch.Tensor]) -> dict[str, float]:
    device = next(agent.parameters()).device
    bins = make_bins(agent.bins).to(device)
    chunks = [f.to(device) for f in data["feat"].split(4096)]
    pred = torch.cat([twohot_decode(agent.reward_logits(f)[:, 0], bins).cpu() for f in chunks]).numpy()
    p_cont = torch.cat([torch.sigmoid(agent.cont_logit(f)).cpu() for f in chunks]).numpy()
    reward, cont = data["reward"].numpy(), data["cont"].numpy()
    kill, lost = reward > 0, cont < 0.5
    return {
        "reward/auc": roc_auc(pred, kill), "reward/ap": average_precision(pred, kill),
        "reward/event_rate": float(kill.mean()),
        "reward/pred_per_step": float(pred.mean()), "reward/data_per_step": float(reward.mean()),
        "reward/mae": float(np.abs(pred - reward).mean()), "reward/mae_zero_baseline": float(np.abs(reward).mean()),
        "reward/mse": float(((pred - reward) ** 2).mean()), "reward/mse_zero_baseline": float((reward**2).mean()),
        "cont/auc": roc_auc(1 - p_cont, lost), "cont/ap": average_precision(1 - p_cont, lost),
        "cont/pred_loss_rate": float((1 - p_cont).mean()), "cont/data_loss_rate": float(lost.mean()),
        "heads/rows": int(len(reward)),
    }
