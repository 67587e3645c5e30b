"""The reward and continuation heads on frozen agent features, and how well they see events.

After joint finetuning the transformer is frozen (imagination RL never changes it), so the
heads that price imagined steps can be fitted on cached features: ``features`` runs the agent
over clips as long as an imagined episode (``rl.context + rl.horizon`` frames, so the heads see
the positions they are read at), ``draws`` noise draws of the context level each, and
``fit_heads`` trains the frame reward head (two-hot; it reads the features and the latents of the
frame and the one before, ``Agent.frame_input``) and the continuation head (binary
cross-entropy) on them for at most ``steps`` Adam steps of ``batch`` rows, keeping the step of
least loss on held-out clips, with the data's own event rates (no re-weighting: a re-weighted
head would be mis-calibrated). A kill is about 1 step in 45; a joint finetuning run of a few
hundred steps sees too few of them for a calibrated head.

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


def kill_pairs(z: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kill probe's rows of clips ``z`` (B, T, L, dz), once per transition: the latents of this
    frame and the one before (B (T - 1), 2, L, dz) and whether a kill follows (reward > 0)."""
    return torch.stack([z[:, 1:], z[:, :-1]], 2).flatten(0, 1), rewards[:, :-1].flatten() > 0


@torch.no_grad()
def features(agent: Agent, batches: Iterable[dict[str, torch.Tensor]], ctx_noise: float, draws: int = 1
             ) -> dict[str, torch.Tensor]:
    """Agent features of every frame after the first, with the reward and continuation of the
    transition into it: ``feat`` (N, D), ``frame`` (N, D + 2 L dz) (the frame reward head's input:
    features, the previous frame's latents, this frame's), ``reward`` (N,), ``cont`` (N,), ``clip``
    (N,) (the clip each row comes from, numbered from 0), one row per transition and noise draw;
    and once per transition ``latents`` (M, 2, L, dz) (this frame and the one before) with
    ``kill`` (M,) (reward > 0), for probes."""
    device = next(agent.parameters()).device
    k_max = agent.dynamics.cfg.k_max
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("feat", "frame", "reward", "cont", "clip", "latents", "kill")}
    clips = 0
    for batch in batches:
        z = batch["latents"].to(device).float()
        prev = shift_actions(batch["actions"].to(device))
        task = torch.zeros(len(z), dtype=torch.long, device=device)
        for _ in range(draws):  # feature rows: draw-major within each batch
            noisy, tau, d = agent_view(z, ctx_noise, k_max)
            _, feat = agent(noisy, tau, d, prev, task)
            out["feat"].append(feat[:, 1:].flatten(0, 1).float().cpu())
            out["frame"].append(agent.frame_input(feat[:, 1:].float(), z[:, :-1], z[:, 1:]).flatten(0, 1).cpu())
            out["reward"].append(batch["rewards"][:, :-1].flatten().float())
            out["cont"].append(batch["continues"][:, :-1].flatten().float())
            out["clip"].append((clips + torch.arange(len(z)))[:, None].expand(-1, z.shape[1] - 1).flatten())
        # once per transition (not per draw), for probes on the latents themselves
        pairs, kill = kill_pairs(z, batch["rewards"])
        out["latents"].append(pairs.cpu())
        out["kill"].append(kill)
        clips += len(z)
    return {k: torch.cat(v) for k, v in out.items()}


def fit_heads(agent: Agent, data: dict[str, torch.Tensor], steps: int, batch: int = 1024, lr: float = 3e-4,
              seed: int = 0, holdout: float = 0.1, check_every: int = 100) -> dict[str, float]:
    """Train the frame reward head and the continuation head on cached features (``features``)
    for at most ``steps`` Adam steps, and keep the step whose summed loss on a held-out
    ``holdout`` of the clips (every 10th clip at 0.1) is least, checked every ``check_every``.
    With ~1 kill in 45 steps the reward head soon memorises its training kills and then
    under-prices unseen ones (on run 8's features: held-out 0.27 vs data 0.47 per step after 3,000
    steps at lr 1e-3); the held-out loss turns up when that starts. The frame head's input
    statistics are set from the training rows first."""
    device = next(agent.parameters()).device
    bins = make_bins(agent.bins).to(device)
    clip = data.get("clip", torch.arange(len(data["reward"])))
    every = max(2, round(1 / holdout)) if holdout > 0 else 0
    held = (clip % every == every - 1) if every else torch.zeros(len(clip), dtype=torch.bool)
    if held.all() or not held.any():  # too few clips to hold any out: fit on all, keep the last step
        held = torch.zeros(len(clip), dtype=torch.bool)
    fit_idx, held_idx = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)
    feat, frame, reward, cont = data["feat"], data["frame"], data["reward"], data["cont"]
    sample = frame[fit_idx[torch.randperm(len(fit_idx), generator=torch.Generator().manual_seed(seed))[:8192]]]
    agent.frame_in_mean.copy_(sample.mean(0).to(device))
    agent.frame_in_std.copy_(sample.std(0).clamp_min(1e-3).to(device))
    heads = (agent.frame_reward_head, agent.cont_head)
    params = [p for h in heads for p in h.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def losses(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rl = twohot_loss(agent.frame_reward_logits(frame[idx].to(device)), reward[idx].to(device), bins).mean()
        cl = F.binary_cross_entropy_with_logits(agent.cont_logit(feat[idx].to(device)), cont[idx].to(device))
        return rl, cl

    best, best_step, best_state = float("inf"), steps, None
    logs: dict[str, float] = {}
    for step in range(1, steps + 1):
        with torch.enable_grad():
            rl, cl = losses(fit_idx[torch.randint(0, len(fit_idx), (batch,), generator=gen)])
            opt.zero_grad(set_to_none=True)
            (rl + cl).backward()
            opt.step()
        logs = {"heads/reward_loss": rl.item(), "heads/cont_loss": cl.item()}
        if len(held_idx) and (step % check_every == 0 or step == steps):
            with torch.no_grad():
                held_loss = sum(sum(x.item() * len(i) for x in losses(i)) for i in held_idx.split(8192)) / len(held_idx)
            if held_loss < best:
                best, best_step = held_loss, step
                best_state = [{k: v.clone() for k, v in h.state_dict().items()} for h in heads]
    if best_state is not None:
        for h, state in zip(heads, best_state):
            h.load_state_dict(state)
    return {**logs, "heads/step_kept": best_step, "heads/held_loss": best if best_state is not None else float("nan"),
            "heads/held_rows": int(len(held_idx))}


@torch.no_grad()
def head_metrics(agent: Agent, data: dict[str, torch.Tensor]) -> dict[str, float]:
    device = next(agent.parameters()).device
    bins = make_bins(agent.bins).to(device)
    pred = torch.cat([twohot_decode(agent.frame_reward_logits(x.to(device)), bins).cpu()
                      for x in data["frame"].split(4096)]).numpy()
    p_cont = torch.cat([torch.sigmoid(agent.cont_logit(f.to(device))).cpu() for f in data["feat"].split(4096)]).numpy()
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
