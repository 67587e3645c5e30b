"""evaluate: the policies in the real game, with fixed seeds.

Random (uniform over the action map), behaviour cloning (the finetuned agent's policy head)
and PMPO (after imagination RL) each play ``eval.episodes`` episodes with the same seeds (the
env's random no-op starts vary the start state; actions are sampled), and so do the scripted
fire schedules of ``SCRIPTED`` (random movement; never fire, fire every 2nd step)
and the aiming reference (``AimPolicy``: fire every 2nd step, move under the nearest enemy).
Reported: mean return with a 95% confidence interval (Student t), episode length, a bar plot
(``data/eval/returns.png``) and a GIF of a PMPO episode (``data/eval/pmpo_episode.gif``).
Episodes run in ``eval.workers`` processes, each holding its own emulator and policy copy.

The imagination check: the same policies also act inside the world model (the PMPO
checkpoint's frozen transformer and reward head, ``eval.imagined_episodes`` episodes of
``rl.horizon`` steps from held-out latent contexts), and the reward per step they earn there is
written beside their real reward per step (plot: ``data/eval/reward_per_step.png``). Imagination
RL can only improve the real return as far as imagination prices the policies as the game does;
these figures show where it does not. Beside them, kills per step (``kills_per_step/{real,
imagined}/<policy>``): counted in the game, and in imagination read from the generated latents
by a kill probe fitted on real ones (``kill_probe``), so the world model's own answer to "does
this policy kill more?" is seen apart from the reward head's.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wm.atomic import write_json_atomic
from wm.config import Config, EnvConfig
from wm.plots import bar_plot, save_gif
from wm.stats import ci95

METRICS_PATH = Path("data/metrics/evaluate.json")
PLOT_PATH = Path("data/eval/returns.png")
RATE_PLOT_PATH = Path("data/eval/reward_per_step.png")
VIDEO_PATH = Path("data/eval/pmpo_episode.gif")
SCRIPTED = ("never_fire", "fire_every_2", "aim_fire_every_2")  # fire_every_1: data/metrics/action_modes.json

_STATE: dict[str, Any] = {}


def _fire_ids(env_cfg: EnvConfig) -> list[int]:
    """The actions of the map that press a fire (tap) button."""
    return [i for i, a in enumerate(env_cfg.action_map) if set(a) & set(env_cfg.tap_buttons)]


def _init(env_cfg: EnvConfig, policy: str, tokenizer_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    from wm.envs.policies import make_policy
    from wm.envs.retro import RetroEnv

    _STATE["env"] = RetroEnv(env_cfg)
    _STATE["fire_ids"] = np.array(_fire_ids(env_cfg))
    _STATE["policy"] = make_policy(policy, _STATE["env"].action_space.n, tokenizer_dir=tokenizer_dir,
                                   action_map=env_cfg.action_map, fire=tuple(env_cfg.tap_buttons),
                                   crop=env_cfg.crop)


def _episode(seed: int) -> tuple[int, float, int, int, int]:
    """(seed, return, length, steps whose action fires, steps that kill (reward > 0))."""
    from wm.envs.rollout import play_episode

    ep = play_episode(_STATE["env"], _STATE["policy"], seed)
    return (seed, ep.ret, len(ep), int(np.isin(np.asarray(ep.actions), _STATE["fire_ids"]).sum()),
            int((np.asarray(ep.rewards) > 0).sum()))


def play(env_cfg: EnvConfig, policy: str, seeds: list[int], workers: int, tokenizer_dir: str) -> list[tuple]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(env_cfg, policy, tokenizer_dir)) as pool:
        return sorted(pool.map(_episode, seeds))


def record_gif(env_cfg: EnvConfig, policy: str, seed: int, tokenizer_dir: str, path: Path, max_frames: int) -> None:
    from wm.envs.rollout import play_episode

    _init(env_cfg, policy, tokenizer_dir)
    ep = play_episode(_STATE["env"], _STATE["policy"], seed)
    frames = [Image.fromarray(f).resize((f.shape[1] * 3, f.shape[0] * 3), Image.Resampling.NEAREST)
              for f in ep.frames[:max_frames]]
    save_gif(frames, path, duration_ms=66)


def kill_probe(cfg: Config, train_rows: int = 40000) -> tuple[Any, dict[str, float]]:
    """A latent kill detector that does not go through the reward head: an MLP probe for "a
    kill in the transition into t" from the latent pair (z_{t-1}, z_t), fitted on real train
    latents (binary cross-entropy: its mean probability matches the training kill rate).
    -> (P(kill) of pairs (N, 2, L, dz), its held-out AUC and calibration)."""
    import itertools

    import torch

    from wm.data.shards import count_clips, make_clip_loader
    from wm.probes import fit_probe, roc_auc

    def pairs(split: str, rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = 32 if split == "train" else min(32, count_clips(cfg.latents.out_dir, split, 16))  # a small val split
        loader = make_clip_loader(cfg.latents.out_dir, split, 16, batch, shuffle=split == "train", seed=cfg.eval.seed,
                                  infinite=split == "train")
        xs, ys = [], []
        for b in loader if rows is None else itertools.islice(loader, -(-rows // (batch * 15))):
            z = b["latents"].float()
            xs.append(torch.stack([z[:, :-1], z[:, 1:]], 2).flatten(0, 1))
            ys.append((b["rewards"][:, :-1] > 0).flatten())
        return torch.cat(xs), torch.cat(ys)

    x_train, y_train = pairs("train", train_rows)
    logits = fit_probe(x_train.flatten(1), y_train, steps=2 * cfg.agent.probe_steps, seed=cfg.eval.seed)

    def prob(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits(x.flatten(1).float()))

    x_val, y_val = pairs("val", None)
    p_val = prob(x_val).cpu().numpy()
    auc = roc_auc(p_val, y_val.numpy())  # nan where the held-out split holds no kill (tiny runs)
    stats = {"kill_probe/auc": auc if math.isfinite(auc) else None, "kill_probe/pred_per_step": float(p_val.mean()),
             "kill_probe/data_per_step": float(y_val.float().mean())}
    return prob, stats


def imagined_rates(cfg: Config) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Reward and kills per step of the random, BC, PMPO and scripted policies inside the world
    model: the reward from the PMPO checkpoint's reward head, the kills from ``kill_probe`` on
    the generated latents. -> (per policy {"reward", "kills"}, the probe's held-out figures)."""
    import torch

    from wm.data.shards import make_clip_loader
    from wm.envs.imagined import ImaginedEnv, imagined_reward_rate
    from wm.envs.policies import AimPolicy, FireSchedule
    from wm.training.distributed import compute_device
    from wm.world_model import WorldModel

    e, r = cfg.eval, cfg.rl
    # the transformer, reward and continuation heads PMPO learned in, and the behaviour-cloned head
    device = compute_device()
    world, _ = WorldModel.load(cfg.rl.out_dir, steps=cfg.dynamics.sample_steps, device=device)
    bc, _ = WorldModel.load(cfg.agent.out_dir, device=device)
    # the same model with the tokenizer's decoder: the aiming reference reads decoded frames
    seeing, _ = WorldModel.load(cfg.rl.out_dir, cfg.tokenizer.out_dir, steps=cfg.dynamics.sample_steps,
                                device=device)
    gen = torch.Generator(device=device)

    def sampled(logits_fn: Any) -> Any:
        return lambda info, t: torch.multinomial(logits_fn(info["features"])[:, 0].softmax(-1), 1,
                                                 generator=gen).squeeze(-1)

    def scripted(name: str) -> Any:
        fire = tuple(cfg.env.tap_buttons)
        if name.startswith("aim_fire_every_"):
            every = int(name.removeprefix("aim_fire_every_"))
            aims = [AimPolicy(cfg.env.action_map, every, fire, cfg.env.crop) for _ in range(r.num_envs)]

            def aim(info: dict[str, Any], t: int) -> torch.Tensor:
                if t == 0:
                    for i, a in enumerate(aims):
                        a.reset(np.random.default_rng([e.seed, i, int(torch.randint(1 << 30, (1,), generator=gen))]))
                return torch.tensor([a.act(f) for a, f in zip(aims, info["frames"])], device=device)

            return aim
        every = 0 if name == "never_fire" else int(name.removeprefix("fire_every_"))
        schedule = FireSchedule(cfg.env.action_map, every, fire)
        return lambda info, t: schedule.actions(t, info["features"].shape[0], gen)

    acts = {"random": lambda info, t: torch.randint(0, world.n_actions, (info["features"].shape[0],), generator=gen,
                                                        device=device),
            "bc": sampled(bc.agent.policy_logits), "pmpo": sampled(world.agent.policy_logits),
            **{name: scripted(name) for name in SCRIPTED}}
    seeds = [e.seed + i for i in range(math.ceil(e.imagined_episodes / r.num_envs))]
    kill_prob, probe_stats = kill_probe(cfg)
    rates = {}
    for name, act in acts.items():  # identical contexts and noise for every policy
        contexts = iter(make_clip_loader(cfg.latents.out_dir, "val", r.context, r.num_envs, shuffle=False,
                                         infinite=True))
        model = seeing if name.startswith("aim_") else world
        env = ImaginedEnv(model, lambda _seed: next(contexts), r.num_envs, max_steps=r.horizon)
        gen.manual_seed(e.seed)
        rates[name] = imagined_reward_rate(env, act, seeds, kill_prob)
    return rates, probe_stats


SHOT_LAGS = (1, 4, 8)


def shot_probes(cfg: Config, train_clips: int = 1500, val_clips: int = 2000) -> dict[str, float | None]:
    """Does imagination keep a shot in flight? For each lag j, an MLP probe for "B was pressed j
    steps before t" from the latent pair (z_{t-1}, z_t), trained on real train latents, scores
    held-out real pairs and pairs ``max(SHOT_LAGS)`` steps into imagined rollouts that follow the
    same real actions from a real ``rl.context``-frame context (the PMPO world model). Real
    latents keep a bullet visible while it flies; where the imagined AUC falls toward 0.5 with
    the lag, the dynamics model drops shots in flight, and kills cannot follow them."""
    import torch

    from wm.data.shards import make_clip_loader
    from wm.models.dynamics import shift_actions
    from wm.probes import probe_scores, roc_auc
    from wm.training.distributed import compute_device
    from wm.world_model import WorldModel

    world, _ = WorldModel.load(cfg.rl.out_dir, steps=cfg.dynamics.sample_steps, device=compute_device())
    fire = torch.tensor(_fire_ids(cfg.env))
    ctx, roll = cfg.rl.context, max(SHOT_LAGS)
    length = ctx + roll

    def clips(split: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, seen = [], 0
        for b in make_clip_loader(cfg.latents.out_dir, split, length, cfg.rl.num_envs, shuffle=split == "train",
                                  seed=cfg.eval.seed, infinite=split == "train"):
            out.append((b["latents"].float(), b["actions"]))
            seen += len(b["actions"])
            if seen >= n:
                break
        return out

    def pairs(z: torch.Tensor, t: int) -> torch.Tensor:  # (z_{t-1}, z_t) flattened, per clip
        return torch.cat([z[:, t - 1], z[:, t]], 1).flatten(1).cpu()

    def pressed(a: torch.Tensor, t: int) -> torch.Tensor:  # did the action at step t fire, per clip
        return torch.isin(a[:, t].cpu(), fire)

    train, val = clips("train", train_clips), clips("val", val_clips)
    gen = torch.Generator(device=world.device).manual_seed(cfg.eval.seed)
    imagined = []
    with torch.no_grad():
        for z, a in val:
            z, a = z.to(world.device), a.to(world.device)
            prev = shift_actions(a)
            caches = world.new_caches()
            world.observe(z[:, :ctx], prev[:, :ctx], caches.dynamics, gen)
            frames = [z[:, :ctx]]
            for k in range(roll):
                step = a[:, ctx - 1 + k : ctx + k]  # the real action that led to frame ctx + k
                frames.append(world.sample(step, caches.dynamics, gen))
                world.observe(frames[-1], step, caches.dynamics, gen)
            imagined.append(torch.cat(frames, 1))
    t, out = length - 1, {}
    train_at = [(z, a, u) for z, a in train for u in range(max(SHOT_LAGS) + 1, length)]
    x_train = torch.cat([pairs(z, u) for z, _, u in train_at])
    x_val = torch.cat([*(pairs(z, t) for z, _ in val), *(pairs(zi, t) for zi in imagined)])
    for lag in SHOT_LAGS:
        labels = torch.cat([pressed(a, t - lag) for _, a in val]).numpy()
        scores = probe_scores(x_train, torch.cat([pressed(a, u - lag) for _, a, u in train_at]), x_val,
                              steps=cfg.agent.probe_steps)
        n = len(labels)
        for name, part in (("real", scores[:n]), ("imagined", scores[n:])):
            auc = roc_auc(part, labels)
            out[f"shot_probe_auc/{name}/lag{lag}"] = auc if math.isfinite(auc) else None
    out["shot_probe_rows"] = n
    return out


def run(cfg: Config) -> dict[str, Any]:
    e = cfg.eval
    start = time.perf_counter()
    seeds = [e.seed + i for i in range(e.episodes)]
    policies = {"random": "random", "bc": f"agent:{cfg.agent.out_dir}", "pmpo": f"agent:{cfg.rl.out_dir}",
                **{name: name for name in SCRIPTED}}
    results: dict[str, dict[str, float]] = {}
    metrics: dict[str, Any] = {"episodes": e.episodes}
    for name, spec in policies.items():
        rows = play(cfg.env, spec, seeds, e.workers, cfg.tokenizer.out_dir)
        returns = [r[1] for r in rows]
        lengths = [r[2] for r in rows]
        results[name] = {"mean": float(np.mean(returns)), "ci95": ci95(returns)}
        metrics[f"return/{name}"] = results[name]["mean"]
        metrics[f"ci95/{name}"] = results[name]["ci95"]
        metrics[f"length/{name}"] = float(np.mean(lengths))
        metrics[f"fire_rate/{name}"] = float(sum(r[3] for r in rows) / max(np.sum(lengths), 1))
        metrics[f"reward_per_step/real/{name}"] = float(np.sum(returns) / max(np.sum(lengths), 1))
        metrics[f"kills_per_step/real/{name}"] = float(sum(r[4] for r in rows) / max(np.sum(lengths), 1))
    # the plot is a declared DVC output: written with the real bars alone when the check is off
    imagined: dict[str, dict[str, float]] = {}
    if e.imagined_episodes > 0:
        imagined, probe_stats = imagined_rates(cfg)
        metrics.update(probe_stats)
        metrics.update(shot_probes(cfg))
    rates: dict[str, dict[str, float]] = {}
    for name in policies:
        rates[f"{name} real"] = {"mean": metrics[f"reward_per_step/real/{name}"], "ci95": float("nan")}
        if name in imagined:
            metrics[f"reward_per_step/imagined/{name}"] = imagined[name]["reward"]
            metrics[f"kills_per_step/imagined/{name}"] = imagined[name]["kills"]
            rates[f"{name} imag."] = {"mean": imagined[name]["reward"], "ci95": float("nan")}
            real = metrics[f"reward_per_step/real/{name}"]
            # no ratio where the game pays nothing (never_fire): the imagined rate says it alone
            metrics[f"imagined_over_real/{name}"] = imagined[name]["reward"] / real if real > 0 else None
    bar_plot(rates, RATE_PLOT_PATH, "reward per step: real game vs inside the world model", ".3f")
    bar_plot(results, PLOT_PATH)
    record_gif(cfg.env, policies["pmpo"], seeds[0], cfg.tokenizer.out_dir, VIDEO_PATH, e.video_frames)
    metrics["pmpo_over_random"] = metrics["return/pmpo"] / max(metrics["return/random"], 1e-9)
    metrics["pmpo_over_bc"] = metrics["return/pmpo"] / max(metrics["return/bc"], 1e-9)
    metrics["wall_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(METRICS_PATH, metrics)
    return metrics
