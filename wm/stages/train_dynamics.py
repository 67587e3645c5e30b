"""train_dynamics: shortcut forcing on cached latents, then open-loop evaluation in pixels.

Batches alternate lengths as in the paper: most are short clips (``short_len``), every
``long_every``-th is long (``long_len``, smaller batch), and a ``single_frame_frac`` share
are single frames (no context: the model must also generate a first frame). The schedule is a
pure function of (seed, step), so a resumed run sees exactly the same batches.

Evaluation, on held-out episodes: encode C real frames, roll out H frames open loop from
the real actions with K sampling steps, decode, and compare with the real frames. PSNR
rewards blur on uncertain futures, so it is read against baselines (repeat the last context
frame; the training mean frame) and mostly over the first 4 frames, where the actions decide.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wm.atomic import write_bytes_atomic, write_json_atomic
from wm.config import ActionFreeConfig, Config, to_dict, with_absolute_paths
from wm.errors import ConfigValueError
from wm.data.shards import (EpisodeLabels, episode_labels, has_clips, make_clip_loader, mixed_batches, train_batches,
                            video_latents_dir)
from wm.models.dynamics import Dynamics, shift_actions
from wm.models.tokenizer import Tokenizer
from wm.models.transformer import Block
from wm.objectives.shortcut import ShortcutLoss
from wm.plots import line_plot, save_gif
from wm.stats import cluster_bootstrap
from wm.timing import synced_clock
from wm.training.trainer import Trainer
from wm.world_model import load_tokenizer, rollout

METRICS_PATH = Path("data/metrics/dynamics.json")
LIVE_DIR = Path("data/metrics/dynamics")
PLOT_PATH = Path("data/metrics/dynamics_psnr_by_step.tsv")
VIDEO_PATH = Path("data/eval/dynamics_rollout.gif")


def build_dynamics(cfg: Config, n_latents: int, latent_dim: int) -> Dynamics:
    return Dynamics(cfg.dynamics, len(cfg.env.action_map), n_latents, latent_dim)


def batch_kind(seed: int, step: int, cfg: Config) -> str:
    """'single', 'long' or 'short' for this step: deterministic in (seed, step)."""
    dyn = cfg.dynamics
    if dyn.long_every > 0 and step % dyn.long_every == dyn.long_every - 1:
        return "long"
    r = np.random.default_rng([seed, step, 7]).random()
    return "single" if r < dyn.single_frame_frac else "short"


def batch_schedule(cfg: Config, info: Any, skip: int, imported_videos: bool = True):
    """Infinite iterator of latent batches following the alternating-length schedule; with
    ``imported_videos`` false, the imported videos (stage import_videos) are left out."""
    dyn, tr = cfg.dynamics, cfg.dynamics.train
    if dyn.unlabeled not in ("video", "drop"):
        raise ConfigValueError(f"dynamics.unlabeled must be 'video' or 'drop', got '{dyn.unlabeled}'")
    labels = episode_labels(cfg.latents.out_dir, "train", dyn.labeled_frac, tr.seed, True)
    videos = video_latents_dir(cfg)

    def batches(root: Any, clip_len: int, batch_size: int, labels: EpisodeLabels | None = None):
        return train_batches(root, tr, info, cfg.data.shuffle_buffer, clip_len=clip_len, batch_size=batch_size,
                             labels=labels)

    streams = {}
    for i, (kind, clip_len, batch_size) in enumerate((("short", dyn.short_len, tr.batch_size),
                                                      ("long", dyn.long_len, dyn.long_batch_size))):
        # labelled clips (every clip when labeled_frac is 1) and, at ``video_share`` of the
        # batches, action-free ones: the unlabelled episodes (unlabeled=video) and imported
        # videos. A fixed share per batch: the action signal does not shrink with the labelled share.
        video = []
        if dyn.video_share > 0 and labels is not None and dyn.unlabeled == "video":
            video.append(batches(cfg.latents.out_dir, clip_len, batch_size, dataclasses.replace(labels, video_only=True)))
        if imported_videos and dyn.video_share > 0 and has_clips(videos, "train", clip_len):
            video.append(batches(videos, clip_len, batch_size))
        stream = batches(cfg.latents.out_dir, clip_len, batch_size, labels)
        if video:
            side = video[0] if len(video) == 1 else mixed_batches(video[0], video[1], 0.5, tr.seed + 10 + i)
            stream = mixed_batches(stream, side, dyn.video_share, tr.seed + i)
        streams[kind] = stream
    short, long = streams["short"], streams["long"]
    pick = np.random.default_rng([tr.seed, 99])
    for step in itertools.count():
        kind = batch_kind(tr.seed, step, cfg)
        batch = next(long if kind == "long" else short)
        if kind == "single":  # one frame of each clip, at a random offset
            t = int(pick.integers(dyn.short_len))
            batch = {k: (v[:, t : t + 1] if torch.is_tensor(v) and v.ndim >= 2 else v) for k, v in batch.items()}
        if step >= skip:
            yield batch


def eval_clips(cfg: Config) -> dict[str, torch.Tensor]:
    dyn = cfg.dynamics
    loader = make_clip_loader(cfg.shard.out_dir, "val", dyn.context + dyn.horizon, dyn.eval_clips, shuffle=False,
                              infinite=True)
    return next(iter(loader))


def mean_train_frame(cfg: Config, batches: int = 8) -> torch.Tensor:
    loader = make_clip_loader(cfg.shard.out_dir, "train", 1, 64, shuffle=True, infinite=True, seed=1)
    frames = [b["frames"].float() / 255 for b in itertools.islice(iter(loader), batches)]
    return torch.cat(frames).flatten(0, 1).mean(0)  # (3, H, W)


def _psnr_by_step(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, H, 3, h, w) -> PSNR of each rollout step's mean squared error over the clips (H,).
    Pooled, not a mean of per-clip PSNRs: a clip whose frame repeats exactly would score the
    1e-10 floor's 100 dB and lift any average it enters (repeat-last, on a still screen)."""
    mse = (pred.clamp(0, 1) - real).pow(2).flatten(2).mean(2)  # (B, H)
    return -10 * torch.log10(mse.mean(0).clamp_min(1e-10))


@torch.no_grad()
def evaluate_dynamics(model: Dynamics, tok: Tokenizer, clips: dict[str, torch.Tensor], cfg: Config,
                      mean_frame: torch.Tensor | None = None, full: bool = True) -> dict[str, Any]:
    dyn = cfg.dynamics
    c, h = dyn.context, dyn.horizon
    device = next(model.parameters()).device
    frames = clips["frames"].to(device).float() / 255.0  # (B, C+H, 3, H, W)
    z = tok.encode(frames)
    prev = shift_actions(clips["actions"].to(device))
    real = frames[:, c:]
    gen = torch.Generator(device=device).manual_seed(0)
    out: dict[str, Any] = {}
    by_step: dict[str, list[float]] = {}

    def run_k(k: int, future_prev: torch.Tensor, tag: str) -> None:
        gen.manual_seed(0)  # identical noise for every variant
        n = future_prev.shape[1]
        zs = rollout(model, z[:, :c], prev[:, :c], future_prev, k, dyn.ctx_noise, generator=gen)
        pix = tok.decode(torch.cat([z[:, :c], zs], dim=1))[:, c:].clamp(0, 1)
        steps = _psnr_by_step(pix, real[:, :n])
        out[f"psnr_h4/{tag}"] = steps[:4].mean().item()
        if n == h:
            out[f"psnr_h{h}/{tag}"] = steps.mean().item()
        by_step[tag] = steps.tolist()
        out.setdefault("_pix", {})[tag] = pix

    ks = (1, 4, dyn.k_max) if full else (dyn.sample_steps,)
    for k in ks:
        # K = k_max costs k_max network passes per frame: it is only needed for psnr_h4
        n = min(4, h) if k == dyn.k_max and k != dyn.sample_steps else h
        run_k(k, prev[:, c : c + n], f"k{k}")
    if full:
        run_k(dyn.sample_steps, prev[:, c:].roll(1, dims=0), f"k{dyn.sample_steps}_shuffled_actions")
        last = frames[:, c - 1 : c].expand_as(real)
        steps = _psnr_by_step(last, real)
        out["psnr_h4/repeat_last"], out[f"psnr_h{h}/repeat_last"] = steps[:4].mean().item(), steps.mean().item()
        by_step["repeat_last"] = steps.tolist()
        if mean_frame is not None:
            mf = mean_frame.to(device).expand_as(real)
            steps = _psnr_by_step(mf, real)
            out[f"psnr_h{h}/mean_frame"] = steps.mean().item()
            by_step["mean_frame"] = steps.tolist()
    out["_by_step"] = by_step
    out["_real"] = real
    return out


def measure_fps(model: Dynamics, z_ctx: torch.Tensor, prev: torch.Tensor, cfg: Config, use_cache: bool,
                frames: int) -> float:
    """Generated frames per second for one stream (batch 1) at the preset's context length."""
    dyn = cfg.dynamics
    c = dyn.context
    rollout(model, z_ctx[:1, :c], prev[:1, :c], prev[:1, c : c + 2], dyn.sample_steps, dyn.ctx_noise,
            use_cache=use_cache)  # warm-up
    device = z_ctx.device
    start = synced_clock(device)
    rollout(model, z_ctx[:1, :c], prev[:1, :c], prev[:1, c : c + frames], dyn.sample_steps, dyn.ctx_noise,
            use_cache=use_cache)
    return frames / (synced_clock(device) - start)


def save_rollout_gif(real: torch.Tensor, imagined: torch.Tensor, path: Path, n: int = 4, scale: int = 2) -> None:
    """Side by side, real | imagined, for ``n`` held-out clips (one row each)."""
    real, imagined = real[:n].cpu(), imagined[:n].cpu()
    sep = torch.ones(*real.shape[:3], real.shape[3], 2)
    rows = torch.cat([real, sep, imagined], dim=-1)  # (n, H, 3, h, 2w+2)
    frames = torch.cat(list(rows), dim=-2)  # (H, 3, n*h, 2w+2)
    images = []
    for f in frames:
        arr = (f.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        images.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))
    save_gif(images, path, duration_ms=150)


def _write_plot(by_step: dict[str, list[float]], path: Path) -> None:
    keys = list(by_step)
    lines = ["step\t" + "\t".join(keys)]
    for i in range(max(len(v) for v in by_step.values())):
        lines.append(f"{i + 1}\t" + "\t".join(f"{by_step[k][i]:.4f}" if i < len(by_step[k]) else ""
                                               for k in keys))
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def _compatible(current: dict[str, Any]):
    def check(saved: dict[str, Any]) -> bool:
        a = {k: v for k, v in saved.get("dynamics", {}).items() if k != "train"}
        b = {k: v for k, v in current["dynamics"].items() if k != "train"}
        return a == b

    return check


def run(cfg: Config, resume: bool = False, imported_videos: bool = True) -> dict[str, Any]:
    dyn = cfg.dynamics
    start = time.perf_counter()
    tok, _ = load_tokenizer(cfg.tokenizer.out_dir)
    n_latents, latent_dim = tok.cfg.n_latents, tok.cfg.latent_dim
    clips = eval_clips(cfg)
    quick = {k: (v[:8] if torch.is_tensor(v) else v) for k, v in clips.items()}

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        out = evaluate_dynamics(model, tok.to(next(model.parameters()).device), quick, cfg, full=False)
        return {f"dynamics/val/{k}": v for k, v in out.items() if not k.startswith("_")}

    run_config = to_dict(cfg)
    trainer = Trainer(
        name="dynamics", cfg=dyn.train, model_factory=lambda: build_dynamics(cfg, n_latents, latent_dim),
        loss_fn=ShortcutLoss.from_config(dyn), data_factory=lambda info, skip: batch_schedule(cfg, info, skip, imported_videos),
        out_dir=dyn.out_dir, run_config=run_config, live_dir=LIVE_DIR, evaluate=evaluate,
        shard_types=(Block,), compatible=_compatible(run_config),
    )
    result = trainer.fit(resume=resume)
    model = trainer.main_process_model()
    if model is None:  # under torchrun, rank 0 evaluates and writes the outputs
        return {}
    tok = tok.to(next(model.parameters()).device)
    out = evaluate_dynamics(model, tok, clips, cfg, mean_train_frame(cfg))
    _write_plot(out.pop("_by_step"), PLOT_PATH)
    pix, real = out.pop("_pix"), out.pop("_real")
    save_rollout_gif(real, pix[f"k{dyn.sample_steps}"], VIDEO_PATH)
    device = next(model.parameters()).device
    frames = clips["frames"].to(device).float() / 255.0
    z_all = tok.encode(frames[:1])
    prev = shift_actions(clips["actions"][:1].to(device))
    n_fps = dyn.horizon  # the whole horizon: the uncached cost grows with the history
    metrics = {
        **out,
        f"fps/k{dyn.sample_steps}_kv": measure_fps(model, z_all, prev, cfg, True, n_fps),
        f"fps/k{dyn.sample_steps}_nokv": measure_fps(model, z_all, prev, cfg, False, n_fps),
        "train_steps_per_s": result["train_steps_per_s"],
        "params": result["params"],
        "steps": result["steps"],
        "context": dyn.context,
        "horizon": dyn.horizon,
        "eval_clips": int(clips["frames"].shape[0]),
        "wall_s": round(time.perf_counter() - start + result["earlier_processes_s"], 1),
    }
    write_json_atomic(METRICS_PATH, metrics)
    return metrics


# name -> (labeled share: None = action_free.labeled_frac, what the other episodes become)
ACTION_FREE_ARMS = (("full", 1.0, "video"), ("labeled_plus_video", None, "video"), ("labeled_only", None, "drop"))
ACTION_FREE_METRICS = Path("data/metrics/action_free.json")  # the summary of the run in the default out_dir
SUMMARY_NAME = "action_free.json"  # every run's summary, in its out_dir
FIGURE_NAME = "action_free.png"  # and its figure
ACTION_FREE_PLOT = Path("data/eval/action_free.png")  # the default run's figure
HELDOUT_FIGURE = "action_free_heldout.png"  # the paired differences on every held-out clip, in each out_dir
ACTION_FREE_HELDOUT_PLOT = Path("data/eval") / HELDOUT_FIGURE  # and the default run's


def arm_steps(af: Any, dyn: Any, name: str) -> int:
    """Training steps of one arm. The labelled+video arm draws ``dyn.video_share`` of its
    batches from action-free clips; with ``af.video_steps == 'matched'`` it trains
    ``steps / (1 - video_share)`` steps, so it sees as many labelled batches as the labelled-only
    arm (the video comes on top instead of in place of them)."""
    if name != "labeled_plus_video" or af.video_steps == "same":
        return af.steps
    if not 0 <= dyn.video_share < 1:
        raise ConfigValueError(f"dynamics.video_share must be in [0, 1) for matched steps, got {dyn.video_share}")
    return int(round(af.steps / (1 - dyn.video_share)))


ARM_RECORD = "arm.json"
RUNTIME_KEYS = ("threads", "compile", "precision", "wandb", "log_every", "ckpt_every",
                "distributed")  # speed or safety, not the result


def data_fingerprints(cfg: Config) -> dict[str, str]:
    """sha256 of the latents manifest the arms train on and of the weights of the tokenizer that
    decodes their evaluation (its weights, not its file: a copy without the optimizer state, as
    scripts/gpu_inputs.py carries to a GPU, is the same tokenizer): the same for every arm of a
    run, so hashed once."""
    from wm.data.shards import MANIFEST, sha256_file
    from wm.training.checkpoint import weights_sha256
    from wm.training.trainer import CHECKPOINT

    return {"latents_manifest": sha256_file(Path(cfg.latents.out_dir) / MANIFEST),
            "tokenizer_weights": weights_sha256(Path(cfg.tokenizer.out_dir) / CHECKPOINT)}


def arm_identity(arm: Config, data: dict[str, str]) -> dict[str, Any]:
    """What an arm's result depends on: its dynamics config (less the run-time settings in
    ``RUNTIME_KEYS``, so an arm may resume with other threads or compiled) and ``data``
    (``data_fingerprints``)."""
    dyn = to_dict(arm)["dynamics"]
    return _without_runtime({"dynamics": dyn, **data})


def _without_runtime(identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` less ``RUNTIME_KEYS`` under dynamics.train; applied to stored records too, so a
    record written when the list was shorter still matches."""
    dyn = dict(identity.get("dynamics", {}))
    if isinstance(dyn.get("train"), dict):
        dyn["train"] = {k: v for k, v in dyn["train"].items() if k not in RUNTIME_KEYS}
    return {**identity, "dynamics": dyn}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_arm(arm_dir: Path, name: str, identity: dict[str, Any]) -> None:
    """Refuse an arm directory that holds an arm trained with other settings or on other data
    (finished or not): reusing or resuming it would mix two experiments. An empty or absent
    directory is a fresh arm."""
    import json

    record = arm_dir / ARM_RECORD
    if record.exists():
        diff = _differences(_without_runtime(json.loads(record.read_text())), json.loads(json.dumps(identity)))
        why = f"other settings or data ({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''})" if diff else ""
    else:
        why = "no record of its settings (arm.json)" if arm_dir.is_dir() and any(arm_dir.iterdir()) else ""
    if why:
        raise ConfigValueError(f"{arm_dir} holds a {name} arm with {why}: remove that directory or set "
                               f"action_free.out_dir elsewhere")


def run_action_free(cfg: Config) -> dict[str, Any]:
    """Dreamer 4's claim on this game: action conditioning from a few labelled episodes, the
    rest of the knowledge from action-free video. Three dynamics models from scratch on the
    same latents and steps -- (a) every action, (b) ``labeled_frac`` of the episodes labelled
    and the others as action-free video, (c) the labelled episodes alone -- each measured on
    the same held-out clips: the action effect ``gap = psnr_h4/kK - psnr_h4/kK_shuffled_actions``
    and the open-loop PSNR over the whole horizon. The labelled+video arm gets as many labelled
    batches as the others get steps, the video on top (``action_free.video_steps``, see
    ``arm_steps``). Each arm trains in its own directory under
    ``action_free.out_dir``; an arm that finished is kept and not retrained if the run is
    interrupted and started again (an unfinished one resumes from its last checkpoint), as long
    as its settings and data are this run's (``check_arm``). The arms train on the game's
    episodes only: imported videos (stage import_videos) would make labelled-only no longer so."""
    import json
    import os

    from wm.data.shards import read_manifest
    from wm.training.trainer import CHECKPOINT

    af, dyn = cfg.action_free, cfg.dynamics
    root = Path(af.out_dir).resolve()
    base = with_absolute_paths(cfg)  # each arm runs in its own directory
    labels = episode_labels(base.latents.out_dir, "train", af.labeled_frac, dyn.train.seed, False)
    episodes = read_manifest(base.latents.out_dir)["splits"]["train"]["episodes"]
    labeled_frames = sum(e["length"] for e in episodes if labels is None or int(e["episode"]) in labels.labeled)
    k, h = dyn.sample_steps, dyn.horizon
    out: dict[str, Any] = {"labeled_frac": af.labeled_frac, "steps": af.steps, "eval_clips": af.eval_clips,
                           "video_steps": af.video_steps, "video_share": dyn.video_share, "seed": dyn.train.seed,
                           "labeled_episodes": len(labels.labeled) if labels else len(episodes),
                           "train_episodes": len(episodes),
                           "labeled_frame_frac": labeled_frames / max(1, sum(e["length"] for e in episodes))}
    names = [name for name, _, _ in ACTION_FREE_ARMS]
    if af.arm and af.arm not in names:
        raise ConfigValueError(f"action_free.arm must be one of {names} or '', got '{af.arm}'")
    if af.video_steps not in ("matched", "same"):
        raise ConfigValueError(f"action_free.video_steps must be 'matched' or 'same', got '{af.video_steps}'")
    cwd, left, walls = os.getcwd(), [], {}
    data = data_fingerprints(base)
    for name, frac, rest in ACTION_FREE_ARMS:
        arm_dir = root / name
        done = arm_dir / METRICS_PATH
        steps = arm_steps(af, dyn, name)
        train = dataclasses.replace(dyn.train, steps=steps, eval_every=steps,
                                    ckpt_every=min(dyn.train.ckpt_every, steps))
        arm = dataclasses.replace(base, dynamics=dataclasses.replace(
            dyn, labeled_frac=af.labeled_frac if frac is None else frac, unlabeled=rest,
            eval_clips=af.eval_clips, out_dir="checkpoint", train=train))
        identity = arm_identity(arm, data)
        check_arm(arm_dir, name, identity)
        if done.exists():
            metrics = json.loads(done.read_text())
        elif af.arm and af.arm != name:
            left.append(name)
            continue
        else:
            arm_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(arm_dir / ARM_RECORD, identity)
            os.chdir(arm_dir)  # the stage's outputs (metrics, plots, gif) land in the arm's directory
            try:
                metrics = run(arm, resume=(arm_dir / "checkpoint" / CHECKPOINT).exists(), imported_videos=False)
            finally:
                os.chdir(cwd)
        walls[name] = metrics["wall_s"]
        out[f"steps/{name}"] = metrics["steps"]
        out[f"gap/{name}"] = metrics[f"psnr_h4/k{k}"] - metrics[f"psnr_h4/k{k}_shuffled_actions"]
        out[f"psnr_h4/k{k}/{name}"] = metrics[f"psnr_h4/k{k}"]
        out[f"psnr_h{h}/k{k}/{name}"] = metrics[f"psnr_h{h}/k{k}"]
        out[f"psnr_h{h}/k{k}_shuffled_actions/{name}"] = metrics[f"psnr_h{h}/k{k}_shuffled_actions"]
    if left:  # another process trains these: the summary is written once every arm is done
        print(f"action-free: arm {af.arm} done; {', '.join(left)} still to train (the summary waits for them)")
        return out
    out[f"psnr_h{h}/repeat_last"] = metrics[f"psnr_h{h}/repeat_last"]
    out["gap_ratio/labeled_plus_video"] = out["gap/labeled_plus_video"] / out["gap/full"] if out["gap/full"] else None
    if af.heldout:
        out.update({f"heldout/{key}": v for key, v in heldout_comparison(root, base, names).items()})
        heldout_plot(out, root / HELDOUT_FIGURE)
    out["wall_s"] = round(sum(walls.values()), 1)  # each arm's training + evaluation, however they were run
    write_json_atomic(root / SUMMARY_NAME, out)
    action_free_plot(root, out, k, root / FIGURE_NAME)
    if root == Path(ActionFreeConfig.out_dir).resolve():  # the DVC stage's run: its tracked metric
        write_json_atomic(ACTION_FREE_METRICS, out)
        write_bytes_atomic(ACTION_FREE_PLOT, (root / FIGURE_NAME).read_bytes())
        if af.heldout:
            write_bytes_atomic(ACTION_FREE_HELDOUT_PLOT, (root / HELDOUT_FIGURE).read_bytes())
    else:
        print(f"action-free: summary in {root / SUMMARY_NAME}, figure {root / FIGURE_NAME} "
              f"({ACTION_FREE_METRICS} is the summary of the run in {ActionFreeConfig.out_dir} only)")
    return out


HELDOUT_ERRORS = "heldout_errors.npz"  # each arm's per-clip errors on every held-out clip (a cache)
HELDOUT_PAIRS = (("labeled_plus_video", "labeled_only"), ("full", "labeled_only"), ("labeled_plus_video", "full"))


def heldout_clips(cfg: Config) -> dict[str, Any]:
    """Every whole held-out clip (context + horizon frames) of the val split, in the shards'
    order, with the episode each one comes from (``episodes``: clips of one episode are not
    independent, so intervals resample episodes)."""
    dyn = cfg.dynamics
    loader = make_clip_loader(cfg.shard.out_dir, "val", dyn.context + dyn.horizon, 1, shuffle=False)
    items = list(loader)
    keys = [b["key"][0] for b in items]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"the held-out loader repeated clips ({len(keys)} drawn, {len(set(keys))} distinct)")
    return {"frames": torch.cat([b["frames"] for b in items]), "actions": torch.cat([b["actions"] for b in items]),
            "episodes": np.array([int(k.split("_")[0].removeprefix("ep")) for k in keys])}


@torch.no_grad()
def clip_errors(model: Dynamics, tok: Tokenizer, clips: dict[str, Any], cfg: Config,
                batch: int = 32) -> dict[str, np.ndarray]:
    """Each clip's pixel mean squared error per predicted frame, (clips, horizon), at K =
    ``sample_steps`` with its own future actions (``true``) and with the previous clip's
    (``shuffled``: the whole set rolled by one, as evaluate_dynamics rolls its batch); the
    noise depends on the batch only, so every model and both variants get the same. Runs on the
    models' device; CPU and CUDA draw different noise, so errors from the two are not paired."""
    dyn = cfg.dynamics
    c, k = dyn.context, dyn.sample_steps
    device = next(model.parameters()).device  # the models' device (tokenizer and dynamics on one)
    prev = shift_actions(clips["actions"]).to(device)
    variants = {"true": prev[:, c:], "shuffled": prev[:, c:].roll(1, dims=0)}
    out: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    gen = torch.Generator(device=device).manual_seed(0)
    for i in range(0, prev.shape[0], batch):
        frames = clips["frames"][i : i + batch].to(device).float() / 255.0
        z = tok.encode(frames)
        for name, future in variants.items():
            gen.manual_seed(i)
            zs = rollout(model, z[:, :c], prev[i : i + batch, :c], future[i : i + batch], k, dyn.ctx_noise, generator=gen)
            pix = tok.decode(torch.cat([z[:, :c], zs], dim=1))[:, c:].clamp(0, 1)
            out[name].append((pix - frames[:, c:]).pow(2).flatten(2).mean(2).double().cpu().numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


def _pooled_psnr(mse: np.ndarray) -> np.ndarray:
    """(clips, steps) -> PSNR per step of the mean error over the clips (as _psnr_by_step)."""
    return -10 * np.log10(np.maximum(mse.mean(0), 1e-10))


def compare_heldout(errors: dict[str, dict[str, np.ndarray]], episodes: np.ndarray, boot: int = 2000) -> dict[str, Any]:
    """The arms' action effect (``gap``: psnr_h4 with true minus shuffled actions) and open-loop
    PSNR over the whole horizon on the same clips, and the paired differences of HELDOUT_PAIRS
    with 95 % intervals from resampling whole episodes (the same resamples for every arm)."""
    arms = list(errors)
    horizon = errors[arms[0]]["true"].shape[1]

    def figures(rows: np.ndarray) -> np.ndarray:
        vals = []
        for a in arms:
            true, shuf = _pooled_psnr(errors[a]["true"][rows]), _pooled_psnr(errors[a]["shuffled"][rows])
            vals += [true[:4].mean() - shuf[:4].mean(), true.mean()]
        return np.array(vals)

    def with_pairs(v: np.ndarray) -> np.ndarray:
        at = {a: i for i, a in enumerate(arms)}
        diffs = [v[..., 2 * at[a] + f] - v[..., 2 * at[b] + f] for a, b in HELDOUT_PAIRS if a in at and b in at
                 for f in (0, 1)]
        return np.concatenate([v, np.stack(diffs, axis=-1)], axis=-1)

    point = with_pairs(figures(np.arange(len(episodes))))
    several = len(np.unique(episodes)) > 1  # one held-out episode (a debug run): no interval
    ci = cluster_bootstrap(lambda rows: with_pairs(figures(rows)), episodes, n=boot) if several else None
    names = [f"{fig}/{a}" for a in arms for fig in ("gap", f"psnr_h{horizon}")]
    names += [f"{fig}/{a}_minus_{b}" for a, b in HELDOUT_PAIRS if a in arms and b in arms
              for fig in ("gap", f"psnr_h{horizon}")]
    out: dict[str, Any] = {"clips": int(len(episodes)), "episodes": int(len(np.unique(episodes)))}
    for i, name in enumerate(names):
        out[name] = float(point[i])
        out[f"{name}_ci95"] = [float(ci[0, i]), float(ci[1, i])] if ci is not None else None
    return out


def heldout_comparison(root: Path, cfg: Config, arms: list[str]) -> dict[str, Any]:
    """Every finished arm scored on every held-out clip (not only the ``eval_clips`` its training
    run reports), each arm's errors cached beside its checkpoint, then ``compare_heldout``."""
    import io

    from wm.data.shards import sha256_file
    from wm.training.distributed import compute_device
    from wm.training.trainer import CHECKPOINT
    from wm.world_model import load_dynamics

    device = compute_device()  # a GPU when there is one: seconds per arm instead of minutes
    clips = heldout_clips(cfg)
    errors, tok = {}, None
    for name in arms:
        ckpt = root / name / "checkpoint" / CHECKPOINT
        cache = root / name / HELDOUT_ERRORS
        digest = sha256_file(ckpt)
        if cache.exists():
            saved = np.load(cache)
            # the noise differs between CPU and CUDA: errors scored on another kind of device are
            # not paired with this run's, so they are scored again
            scored_on = str(saved["device"]) if "device" in saved else "cpu"  # older caches: the CPU
            if (str(saved["checkpoint_sha256"]) == digest and saved["true"].shape[0] == len(clips["episodes"])
                    and scored_on == device.type):
                errors[name] = {"true": saved["true"], "shuffled": saved["shuffled"]}
                continue
        if tok is None:
            tok, _ = load_tokenizer(cfg.tokenizer.out_dir, device)
        model, _ = load_dynamics(root / name / "checkpoint", len(cfg.env.action_map))
        print(f"action-free: scoring arm {name} on {len(clips['episodes'])} held-out clips ({device.type})")
        errors[name] = clip_errors(model.to(device).eval(), tok, clips, cfg)
        buf = io.BytesIO()
        np.savez(buf, checkpoint_sha256=digest, device=device.type, **errors[name])
        write_bytes_atomic(cache, buf.getvalue())
    out = compare_heldout(errors, clips["episodes"])
    out["device"] = device.type
    repeat = repeat_last_errors(clips["frames"], cfg.dynamics.context)  # the trivial predictor, same clips
    out[f"psnr_h{repeat.shape[1]}/repeat_last"] = float(_pooled_psnr(repeat).mean())
    return out


def repeat_last_errors(frames: torch.Tensor, context: int) -> np.ndarray:
    """(clips, T, 3, H, W) uint8 -> each clip's mean squared error per predicted frame when the
    last context frame is repeated, (clips, T - context)."""
    last = frames[:, context - 1 : context].float() / 255.0
    return (frames[:, context:].float() / 255.0 - last).pow(2).flatten(2).mean(2).double().numpy()


def heldout_plot(summary: dict[str, Any], path: Path) -> None:
    """The summary's paired arm differences on every held-out clip, each with its 95 % interval
    over held-out episodes (``heldout/...``): action effect and open-loop PSNR."""
    from wm.plots import interval_plot

    short = {"full": "full", "labeled_plus_video": "video", "labeled_only": "labelled-only"}
    h16 = next(k.removeprefix("heldout/").split("/")[0] for k in summary if k.startswith("heldout/psnr_h"))
    rows = []
    for colour, fig in enumerate(("gap", h16)):
        for a, b in HELDOUT_PAIRS:
            key = f"heldout/{fig}/{a}_minus_{b}"
            ci = summary[f"{key}_ci95"]
            rows.append((f"{fig}: {short[a]} - {short[b]}", summary[key], tuple(ci) if ci else None, colour))
    interval_plot(rows, path, f"paired differences, {summary['heldout/clips']} held-out clips "
                  f"({summary['heldout/episodes']} episodes), {summary['labeled_episodes']} of "
                  f"{summary['train_episodes']} training episodes labelled, seed {summary['seed']}",
                  "dB (95 % interval: held-out episodes resampled)")


def action_free_plot(root: Path, summary: dict[str, Any], k: int, path: Path) -> None:
    """Open-loop PSNR over the horizon of each arm (the arms' ``dynamics_psnr_by_step.tsv``): with
    the true actions (solid) and shuffled actions (dashed), the gap between them being the action
    effect, and repeat-last (grey) as the floor."""
    import csv

    series = []
    for i, (name, _, _) in enumerate(ACTION_FREE_ARMS):
        with open(root / name / PLOT_PATH, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        series.append((f"{name} (gap {summary[f'gap/{name}']:.2f} dB)", [float(r[f"k{k}"]) for r in rows], i, False))
        series.append((f"{name}, shuffled actions", [float(r[f"k{k}_shuffled_actions"]) for r in rows], i, True))
    series.append(("repeat last frame", [float(r["repeat_last"]) for r in rows], 5, False))
    labelled = f"{summary['labeled_episodes']} of {summary['train_episodes']} episodes labelled"
    line_plot(series, path, f"action-free experiment: {labelled}, open-loop PSNR (K={k})",
              "frames predicted", "PSNR dB")
