"""finetune_agent: agent tokens learn behaviour cloning and rewards by multi-token prediction,
while the dynamics loss continues (Dreamer 4 §agent finetuning); then the reward and
continuation heads are fitted on the frozen features (wm/training/heads.py) and measured.

The agent reads latents the way it will at imagination time: every frame at the context
noise level (signal 1 - ctx_noise). Each agent token predicts the next ``mtp`` actions
(cross-entropy) and rewards (symlog two-hot); the shortcut-forcing loss keeps training the
shared transformer on the same clips; the continuation head learns whether each transition
kept the episode going (no life lost). Held-out metrics (data/metrics/agent.json): action
accuracy per offset; for the reward head the ROC-AUC and average precision of "a kill at this
step", calibration (``reward/pred_per_step`` vs ``reward/data_per_step``) and the error against
the all-zero predictor; the same ranking for lost lives; and small probes on the same kill
targets from the tokenizer latents and from pixels (``reward/probe_auc/{latents,pixels}``), which
say whether the tokenizer kept what scores.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wm.atomic import write_json_atomic
from wm.config import Config, to_dict
from wm.data.held_out import held_out_batches
from wm.data.shards import make_clip_loader, train_batches
from wm.models.agent import Agent, agent_view
from wm.models.dynamics import NO_ACTION_INDEX, Dynamics, shift_actions
from wm.models.transformer import Block
from wm.objectives.mtp import mtp_targets, reward_targets
from wm.objectives.shortcut import ShortcutLoss
from wm.objectives.twohot import make_bins, twohot_decode, twohot_loss
from wm.probes import average_precision, probe_scores, roc_auc
from wm.training.checkpoint import load_checkpoint, save_checkpoint
from wm.training.heads import features, fit_heads, head_metrics
from wm.training.trainer import CHECKPOINT, Trainer
from wm.world_model import load_dynamics

METRICS_PATH = Path("data/metrics/agent.json")
LIVE_DIR = Path("data/metrics/agent")
EVAL_BATCH = 16  # clips per held-out batch, whatever the training batch size


def agent_for_finetuning(agent: Agent) -> Agent:
    """Freeze what finetuning does not train: the value head learns in imagination only, the
    frame reward head on the frozen features afterwards (``fit_and_measure_heads``). A
    parameter no loss reaches would also stop DDP at its second step (it expects every
    trainable parameter to get a gradient)."""
    agent.value_head.requires_grad_(False)
    agent.frame_reward_head.requires_grad_(False)
    return agent


class AgentLoss(nn.Module):
    """``(agent, batch) -> (loss, logs)``: shortcut forcing + MTP behaviour cloning + MTP rewards."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.shortcut = ShortcutLoss.from_config(cfg.dynamics)
        self.register_buffer("bins", make_bins(cfg.agent.bins))

    def forward(self, agent: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        a = self.cfg.agent
        core = agent.module if hasattr(agent, "module") else agent
        dyn_loss, logs = self.shortcut(agent, batch)  # task=None: the dynamics path of the same model
        z = batch["latents"].float()
        # action-free clips (videos, or episodes whose labels the action-free experiment hides):
        # the dynamics loss above trains on them; no action reaches the model and no action,
        # reward or continuation target reaches a loss
        free = batch.get("action_free")
        labeled = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if free is None else ~free.to(z.device)
        actions = torch.where(labeled[:, None], batch["actions"], torch.full_like(batch["actions"], NO_ACTION_INDEX))
        prev = shift_actions(actions)
        noisy, tau, d = agent_view(z, self.cfg.dynamics.ctx_noise, self.cfg.dynamics.k_max)
        task = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        _, feat = agent(noisy, tau, d, prev, task)
        act_t, act_valid = mtp_targets(actions.clamp_min(0), a.mtp, fill=0)
        act_valid = act_valid & labeled[:, None, None]
        rew_t, rew_valid = reward_targets(batch["rewards"].float(), a.mtp)
        rew_valid = rew_valid & labeled[:, None, None]
        logits = core.policy_logits(feat)
        bc = F.cross_entropy(logits.flatten(0, 2), act_t.flatten(), reduction="none").view_as(act_t.float())
        bc = (bc * act_valid).sum() / act_valid.sum().clamp_min(1)
        rl = twohot_loss(core.reward_logits(feat), rew_t, self.bins)
        rl = (rl * rew_valid).sum() / rew_valid.sum().clamp_min(1)
        # continuation of the transition into frame t (t >= 1), as the reward's offset 0
        cl = F.binary_cross_entropy_with_logits(core.cont_logit(feat)[:, 1:], batch["continues"][:, :-1].float(),
                                                reduction="none")
        rows = labeled[:, None].expand_as(cl).float()
        cl = (cl * rows).sum() / rows.sum().clamp_min(1)
        loss = a.dynamics_weight * dyn_loss + a.bc_weight * bc + a.reward_weight * (rl + cl)
        with torch.no_grad():
            acc0 = (logits[:, :, 0].argmax(-1) == batch["actions"]).float().mean().item()
        logs.update({"agent/train/loss": loss.item(), "agent/train/bc": bc.item(), "agent/train/reward": rl.item(),
                     "agent/train/cont": cl.item(),
                     "agent/train/action_acc_o0": acc0})
        return loss, logs


@torch.no_grad()
def evaluate_agent(agent: Agent, batches: list[dict[str, torch.Tensor]], cfg: Config) -> dict[str, Any]:
    a = cfg.agent
    device = next(agent.parameters()).device
    bins = make_bins(a.bins).to(device)
    torch.manual_seed(0)
    correct = torch.zeros(a.mtp, device=device)
    counts = torch.zeros(a.mtp, device=device)
    err, base_err, sq, base_sq, n = 0.0, 0.0, 0.0, 0.0, 0
    scores, events = [], []
    rewards_all = torch.cat([b["rewards"].float() for b in batches])
    mean_reward = rewards_all.mean().item()
    for batch in batches:
        z = batch["latents"].to(device).float()
        actions = batch["actions"].to(device)
        rewards = batch["rewards"].to(device).float()
        noisy, tau, d = agent_view(z, cfg.dynamics.ctx_noise, cfg.dynamics.k_max)
        _, feat = agent(noisy, tau, d, shift_actions(actions), torch.zeros(len(z), dtype=torch.long, device=device))
        act_t, valid = mtp_targets(actions, a.mtp)
        hit = (agent.policy_logits(feat).argmax(-1) == act_t) & valid
        correct += hit.sum(dim=(0, 1)).float()
        counts += valid.sum(dim=(0, 1)).float()
        # offset 0 of frame t is the reward of the transition into t: rewards[t - 1]
        pred_r = twohot_decode(agent.reward_logits(feat)[:, 1:, 0], bins)
        target = rewards[:, :-1]
        err += (pred_r - target).abs().sum().item()
        base_err += (mean_reward - target).abs().sum().item()
        sq += (pred_r - target).pow(2).sum().item()
        base_sq += (mean_reward - target).pow(2).sum().item()
        scores.append(pred_r.flatten().cpu())
        events.append((target != 0).flatten().cpu())
        n += target.numel()
    acc = (correct / counts.clamp_min(1)).tolist()
    out: dict[str, Any] = {f"val/action_acc/o{i}": v for i, v in enumerate(acc)}
    out["val/action_acc_chance"] = 1.0 / agent.n_actions
    out["val/reward_mae"] = err / max(n, 1)
    out["val/reward_mae_mean_baseline"] = base_err / max(n, 1)
    # the head predicts the expected reward (two-hot mean), which minimises squared error; absolute error
    # favours the median (0 for sparse rewards), so judge the head by MSE against the mean's, and by AUC
    out["val/reward_mse"] = sq / max(n, 1)
    out["val/reward_mse_mean_baseline"] = base_sq / max(n, 1)
    out["val/reward_auc"] = roc_auc(torch.cat(scores).numpy(), torch.cat(events).numpy())
    return out


def val_batches(cfg: Config) -> list[dict[str, torch.Tensor]]:
    """finetune_agent's held-out set: ``agent.eval_batches`` batches of 16 latent clips spread
    over the val split (0: all of it), the same whatever the training batch size or seed."""
    return held_out_batches(cfg.latents.out_dir, cfg.agent.train.clip_len, EVAL_BATCH, cfg.agent.eval_batches)


def run(cfg: Config, resume: bool = False) -> dict[str, Any]:
    a = cfg.agent
    start = time.perf_counter()
    n_actions = len(cfg.env.action_map)
    dynamics, _ = load_dynamics(cfg.dynamics.out_dir, n_actions)
    pretrained = {k: v.clone() for k, v in dynamics.state_dict().items()}
    held_out = val_batches(cfg)

    def model_factory() -> Agent:
        dyn = Dynamics(dynamics.cfg, n_actions, dynamics.n_latents, dynamics.latent_dim)
        dyn.load_state_dict(pretrained)  # the trainer seeds and builds; start from the trained dynamics
        return agent_for_finetuning(Agent(dyn, n_tasks=1, mtp=a.mtp, bins=a.bins))

    def data_factory(info, skip: int):
        return train_batches(cfg.latents.out_dir, a.train, info, cfg.data.shuffle_buffer, skip)

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        out = evaluate_agent(model, held_out[::4], cfg)  # a quarter, spread over the split
        return {f"agent/{k}": v for k, v in out.items() if k in ("val/action_acc/o0", "val/reward_mae")}

    trainer = Trainer(name="agent", cfg=a.train, model_factory=model_factory, loss_fn=AgentLoss(cfg),
                      data_factory=data_factory, out_dir=a.out_dir, run_config=to_dict(cfg), live_dir=LIVE_DIR,
                      evaluate=evaluate, shard_types=(Block,))
    result = trainer.fit(resume=resume)
    model = trainer.main_process_model()
    if model is None:  # under torchrun, rank 0 evaluates and writes the outputs
        return {}
    heads = fit_and_measure_heads(model, cfg)
    path = Path(a.out_dir) / CHECKPOINT  # the trainer's checkpoint, now with the fitted heads
    state = load_checkpoint(path)
    state["model"] = model.state_dict()
    save_checkpoint(path, state, state.get("config"))
    metrics = {**evaluate_agent(model, held_out, cfg), **heads, "train_steps_per_s": result["train_steps_per_s"],
               "params": result["params"], "steps": result["steps"], "mtp": a.mtp,
               "wall_s": round(time.perf_counter() - start + result["earlier_processes_s"], 1)}
    write_json_atomic(METRICS_PATH, metrics)
    return metrics


def _clips(shard_dir: str, split: str, clip_len: int, seed: int = 0, rows: int | None = None):
    """Shuffled train clips (``rows`` transitions' worth, batches of 16) or every held-out clip in
    order (batches of 4, so a small held-out split still fills one)."""
    if split == "train":
        loader = make_clip_loader(shard_dir, split, clip_len, 16, infinite=True, seed=seed)
        return itertools.islice(iter(loader), -(-rows // (16 * (clip_len - 1))))
    return iter(make_clip_loader(shard_dir, split, clip_len, 4, shuffle=False))


def fit_and_measure_heads(agent: Agent, cfg: Config) -> dict[str, Any]:
    """Fit the reward/continuation heads on frozen features of imagination-length clips, then
    measure them and the latent/pixel probes on held-out episodes."""
    a = cfg.agent
    clip_len = cfg.rl.context + cfg.rl.horizon
    torch.manual_seed(a.train.seed)
    t0 = time.perf_counter()
    train = features(agent, _clips(cfg.latents.out_dir, "train", clip_len, a.train.seed, a.head_rows),
                     cfg.dynamics.ctx_noise, draws=a.head_draws)
    val = features(agent, _clips(cfg.latents.out_dir, "val", clip_len), cfg.dynamics.ctx_noise)
    feat_s = time.perf_counter() - t0
    logs = fit_heads(agent, train, a.head_steps, lr=a.head_lr, seed=a.train.seed)
    out: dict[str, Any] = {**head_metrics(agent, val), **logs, "heads/train_rows": int(len(train["reward"])),
                           "heads/features_s": round(feat_s, 1)}
    # probes on the same targets: does a small classifier find the kills in the latents? in pixels?
    scores = probe_scores(train["latents"].flatten(1), train["kill"], val["latents"].flatten(1),
                          steps=a.probe_steps, seed=a.train.seed)
    out["reward/probe_auc/latents"] = roc_auc(scores, val["kill"].numpy())
    out["reward/probe_ap/latents"] = average_precision(scores, val["kill"].numpy())
    px_train = _frame_pairs(cfg.latents.in_dir, "train", a.head_rows // a.head_draws, a.train.seed)
    px_val = _frame_pairs(cfg.latents.in_dir, "val", None, 0)
    scores = probe_scores(px_train[0], px_train[1], px_val[0], steps=a.probe_steps, seed=a.train.seed)
    out["reward/probe_auc/pixels"] = roc_auc(scores, px_val[1].numpy())
    out["reward/probe_ap/pixels"] = average_precision(scores, px_val[1].numpy())
    out["heads/wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _frame_pairs(shard_dir: str, split: str, rows: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame t, frame t - 1) as flat uint8 rows and "a kill in the transition into t"."""
    xs, ys, n = [], [], 0
    for batch in _clips(shard_dir, split, 8, seed, rows):
        f = batch["frames"]  # (B, T, 3, H, W) uint8
        xs.append(torch.stack([f[:, 1:], f[:, :-1]], 2).flatten(0, 1).flatten(1))
        ys.append(batch["rewards"][:, :-1].flatten() > 0)
        n += len(ys[-1])
        if rows is not None and n >= rows:
            break
    return torch.cat(xs), torch.cat(ys)
