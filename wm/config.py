"""Typed configuration: the only place raw dicts become configs.

The values live in the Hydra tree under ``wm/conf`` (base ``config.yaml`` + ``env/`` and
``preset/`` groups). ``compose()`` resolves it into a plain dict (what ``params.yaml``
holds and DVC tracks); ``from_dict()`` turns such a dict into the dataclasses below,
strictly: an unknown key, a missing key or a wrongly typed value is a ``ConfigError`` that
names the valid keys (and the closest match). Dataclass fields carry no defaults on purpose:
the YAML tree is the single source of values, and a key added to one but not the other is
caught at load time.
"""

from __future__ import annotations

import dataclasses
import os
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wm.errors import ConfigValueError, UserError

CONF_DIR = Path(__file__).parent / "conf"
PRESETS = ("debug", "default", "gpu", "paper")


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix (bad key, bad type, bad override)."""


@dataclass(frozen=True)
class EnvConfig:
    game: str
    state: str | None
    frameskip: int
    sticky_prob: float
    height: int
    width: int
    max_episode_steps: int
    action_map: list[list[str]]
    fire_mode: str           # hold: the map's buttons for the whole frameskip | tap: `tap_buttons` only on its first frame
    tap_buttons: list[str]   # buttons that act on a new press (Airstriker: B fires on the press, not while held)
    maxpool: bool            # observation = max over the last two emulator frames (flickering sprites)
    resize: str              # box: area average to height x width | boxmax: area average to 2x, then 2x2 max
    noop_max: int            # reset plays U{0..noop_max} no-op agent steps (varied starts; 0: off)
    crop: list[float]        # [top, bottom, left, right]: shares of the native frame cut off before the resize


NO_CROP = (0.0, 0.0, 0.0, 0.0)


def check_crop(crop: list[float] | tuple[float, ...]) -> None:
    """``env.crop`` is four shares [top, bottom, left, right], each >= 0, leaving some frame; the
    env and the video import (its two readers) both check it."""
    if len(crop) != 4 or any(not 0 <= c < 1 for c in crop) or crop[0] + crop[1] >= 1 or crop[2] + crop[3] >= 1:
        raise ConfigValueError(f"env.crop must be four shares [top, bottom, left, right] in [0, 1) that leave "
                               f"part of the frame (top + bottom < 1, left + right < 1), got {list(crop)}")


@dataclass(frozen=True)
class CollectConfig:
    policy: str
    frames: int
    workers: int
    seed: int
    sticky_mean_steps: float
    raw_bench_seconds: float
    out_dir: str
    backend: str             # processes | dask (one Dask task per worker)
    dask_address: str        # "" = a local cluster; else an existing scheduler's address


@dataclass(frozen=True)
class ShardConfig:
    in_dir: str
    out_dir: str
    chunk_len: int
    chunks_per_shard: int
    val_fraction: float
    compress_level: int
    extra_dir: str = ""      # more episode sets, one sub-dir each (retraining's collections)


@dataclass(frozen=True)
class VideosConfig:
    """Action-free videos as a pipeline input (stage import_videos): every mp4/avi in ``in_dir``
    becomes action-free shards in ``out_dir``; the tokenizer trains on their frames, the
    dynamics on their clips (``dynamics.video_share``), cache_latents encodes them into
    ``<latents.out_dir>/videos``."""

    in_dir: str = "data/videos"
    out_dir: str = "data/video_shards"
    fps: float = 0.0          # resample to this rate (0: the env's agent-step rate, 60 / frameskip)


@dataclass(frozen=True)
class DataConfig:
    shuffle_buffer: int      # samples held by each reader's shuffle buffer (every training stage)


@dataclass(frozen=True)
class TransformerConfig:
    dim: int
    depth: int
    heads: int
    kv_heads: int            # GQA: key/value heads shared by heads // kv_heads query heads
    mlp_ratio: float
    time_every: int          # every n-th block attends over time (0: never)
    time_window: int         # frames a time block can see (0: all past frames)
    qk_norm: bool
    softcap: float           # attention logit soft cap (0: off, SDPA fast path)
    rope_base: float
    registers: int
    zero_residual: bool = False  # each block's attn.out and mlp.down start at zero: every block starts as the
                                 # identity (README #16: the tokenizer's seed-to-seed spread)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    clip_len: int
    lr: float
    min_lr_ratio: float      # cosine decays to lr * min_lr_ratio
    warmup: int
    weight_decay: float
    grad_clip: float
    log_every: int
    eval_every: int
    ckpt_every: int
    seed: int
    num_workers: int
    precision: str           # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool
    distributed: str         # none | ddp | fsdp (under torchrun)
    wandb: str               # offline | disabled | online
    threads: int             # torch CPU threads (0: torch's default)
    init_from: str = ""      # warm start: a checkpoint dir whose model weights start a fresh run


@dataclass(frozen=True)
class TokenizerConfig:
    patch: int
    n_latents: int
    latent_dim: int
    mask_max: float          # MAE: per-sample mask ratio ~ U(0, mask_max)
    mask_prob: float         # share of frames that are masked at all (paper: 1.0)
    lpips_weight: float
    lpips_frames: int        # frames per batch that go through LPIPS (it dominates CPU cost)
    lpips_net: str           # stlpips_alex | stlpips_vgg | lpips_alex | none (wm/objectives/perceptual.py)
    lpips_balance: str       # loss: each term / its running RMS (paper) | grad: the perceptual term's gradient at
                             # the reconstruction scaled to lpips_weight x the MSE term's there
    moving_weight: float     # extra MSE weight on pixels that change from the previous frame (0: plain MSE)
    hard_frac: float         # share of each frame's pixels with the largest error that get hard_weight more
    hard_weight: float       # extra MSE weight on those hard pixels (0: off)
    rms_decay: float         # running RMS used to normalise each loss term
    encoder: TransformerConfig
    decoder: TransformerConfig
    train: TrainConfig
    eval_batches: int        # held-out batches of 8 clips, spread over the val split; 0: all of it
    out_dir: str
    out_init: str = "torch"  # patch_out's init: torch (PyTorch's Linear default: the first reconstruction is
                             # N(0, ~0.6) noise) | zero (starts black, like ~95 % of the pixels)


@dataclass(frozen=True)
class LatentsConfig:
    in_dir: str              # frame shards to encode
    out_dir: str
    batch_chunks: int        # chunks encoded per forward pass


@dataclass(frozen=True)
class DynamicsConfig:
    k_max: int               # finest step 1/k_max (paper: 64)
    ctx_noise: float         # noise level of context frames when sampling (paper: 0.1)
    sample_steps: int        # K denoising steps per generated frame (paper: 4)
    short_len: int           # T1: most batches
    long_len: int            # T2: every long_every-th batch
    long_every: int
    long_batch_size: int
    single_frame_frac: float  # fraction of batches that are single frames (paper: ~0.3)
    context: int             # eval: real context frames before an open-loop rollout
    horizon: int             # eval: frames generated open loop
    eval_clips: int
    model: TransformerConfig
    train: TrainConfig
    out_dir: str
    context_frac: float = 0.0  # share of training frames drawn at the sampler's context level (paper: 0)
    forcing_frac: float = 0.0  # share of clips drawn as next-frame prediction (context | pure noise) (paper: 0)
    event_weight: float = 0.0  # extra loss weight on frames within 3 steps after a kill or a lost life (0: off)
    pack: int = 1              # tokenizer latents per spatial token (the paper's S_z = n_latents / pack)
    prev_input: bool = False   # each latent token also sees the previous frame's latent at its slot (paper: no)
    labeled_frac: float = 1.0  # share of training episodes that keep their actions (the action-free experiment)
    video_share: float = 0.5   # share of training batches from action-free videos, when there are any
    unlabeled: str = "video"   # the other episodes: 'video' (trained action-free) or 'drop' (left out)


@dataclass(frozen=True)
class AgentConfig:
    mtp: int                 # multi-token prediction length L (paper: 8)
    bins: int                # symlog two-hot bins of the reward/value heads
    bc_weight: float
    reward_weight: float
    dynamics_weight: float   # the dynamics loss continues during finetuning
    eval_batches: int        # held-out batches of 16 clips, spread over the val split; 0: all of it
    head_rows: int           # transitions (x head_draws) the reward/continuation heads are fitted on
    head_draws: int          # context-noise draws per transition
    head_steps: int          # at most this many Adam steps of the heads on the frozen features
    head_lr: float           # their learning rate (the step kept: least held-out loss, wm/training/heads.py)
    probe_steps: int         # Adam steps of each probe (latents, pixels)
    train: TrainConfig
    out_dir: str


@dataclass(frozen=True)
class RLConfig:
    iterations: int
    num_envs: int            # imagined episodes per iteration
    horizon: int             # imagined steps per episode
    context: int             # real context frames each imagined episode starts from
    lr: float
    gamma: float             # paper: 0.997
    lam: float               # paper: 0.95
    alpha: float             # PMPO weight of the positive set (paper: 0.5)
    beta: float              # reverse KL to the behaviour-cloned prior (paper: 0.3)
    value_warmup: int        # value-only iterations before the first policy step
    center: str              # none | mean | median: centre advantages per imagined step over the batch
    guard_low: float         # skip the policy step when the positive-advantage share leaves [low, high]
    guard_high: float
    grad_clip: float
    log_every: int
    ckpt_every: int          # iterations between resumable checkpoints (`wm imagine-rl --resume`)
    seed: int
    wandb: str
    out_dir: str


@dataclass(frozen=True)
class EvalConfig:
    episodes: int            # real-game episodes per policy, same seeds for all
    seed: int
    workers: int
    video_frames: int
    imagined_episodes: int = 64  # the same policies inside the world model (0: skip), rl.horizon steps each


@dataclass(frozen=True)
class ActionFreeConfig:
    """The action-free experiment (`wm action-free`): the dynamics trained with every action,
    with ``labeled_frac`` of the episodes labelled and the rest as action-free video, and with
    the labelled share alone; the action effect of each on the same held-out clips."""

    labeled_frac: float = 0.008  # share of training episodes that keep their actions (0.008: one of 130; at 0.1
                                 # the labelled episodes alone already match every action: README)
    steps: int = 2600          # dynamics training steps per arm (from scratch)
    eval_clips: int = 32       # held-out clips every arm is measured on
    out_dir: str = "data/action_free"
    arm: str = ""              # train this arm only (several processes in parallel); '' = every arm
    video_steps: str = "matched"  # labelled+video arm: 'matched' = steps / (1 - dynamics.video_share), so it
                                  # gets as many labelled batches as the other arms get steps; 'same' = steps
    heldout: bool = True       # also score every arm on every held-out clip, with episode-bootstrap intervals
                               # on the paired arm differences (summary keys heldout/...)


@dataclass(frozen=True)
class Config:
    preset_name: str
    env: EnvConfig
    collect: CollectConfig
    shard: ShardConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    latents: LatentsConfig
    dynamics: DynamicsConfig
    agent: AgentConfig
    rl: RLConfig
    eval: EvalConfig
    action_free: ActionFreeConfig = ActionFreeConfig()
    videos: VideosConfig = VideosConfig()


T = TypeVar("T")


def _close(name: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean '{match[0]}'?" if match else ""


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_check_value(k, kt, where): _check_value(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown/missing keys and bad types raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'.{_close(str(key), names)} "
                f"Valid keys{' of ' + where if where else ''}: {', '.join(names)}"
            )
    optional = {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is not dataclasses.MISSING}  # keys added later: older saved configs lack them
    missing = [n for n in names if n not in data and n not in optional]
    if missing:
        raise ConfigError(f"missing config key(s) {', '.join(prefix + m for m in missing)}")
    kwargs = {n: _check_value(data[n], hints[n], prefix + n) for n in names if n in data}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def compose(preset: str = "default", overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """Compose the Hydra tree (``wm/conf``) for ``preset`` plus ``key=value`` overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'.{_close(preset, PRESETS)} Valid presets: {', '.join(PRESETS)}")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[f"preset={preset}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad override {list(overrides)}: {err}") from err
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    from_dict(Config, raw)  # validate now, so a bad composition fails here
    return raw


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"bad override '{item}': expected key=value, e.g. collect.frames=1000")
    key, _, text = item.partition("=")
    if not key:
        raise ConfigError(f"bad override '{item}': empty key")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"bad override '{item}': cannot parse value ({err})") from err
    if isinstance(value, str):
        # YAML 1.1 reads "3e-3" as a string; people mean the number.
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides; only existing keys."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                valid = list(node) if isinstance(node, dict) else []
                where = ".".join(path[:i]) or "<root>"
                raise ConfigError(
                    f"bad override '{item}': unknown key '{'.'.join(path[: i + 1])}'.{_close(part, valid)} "
                    f"Valid keys of {where}: {', '.join(map(str, valid))}"
                )
            if i == len(path) - 1:
                node[part] = value
            else:
                node = node[part]
    return out


def load(params: str | Path = "params.yaml", overrides: typing.Sequence[str] = ()) -> Config:
    """Load the resolved params file (what DVC tracks) plus CLI overrides into a Config."""
    path = Path(params)
    if not path.exists():
        raise ConfigError(f"{path} not found: run `wm compose --preset default` to create it")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return from_dict(Config, apply_overrides(raw, overrides))


PATH_FIELDS = ("in_dir", "out_dir", "extra_dir", "init_from")  # the config's folders (every section's)


def with_absolute_paths(cfg: T, root: str | Path | None = None) -> T:
    """``cfg`` with every folder it names (``PATH_FIELDS``, in any section) made absolute from
    ``root`` (default: the working directory), so a stage run from another working directory
    (``wm <stage> --workdir``) reads and writes the same folders; empty fields stay empty."""
    base = Path(root) if root is not None else Path.cwd()

    def fix(obj: Any) -> Any:
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                changes[f.name] = fix(value)
            elif f.name in PATH_FIELDS and isinstance(value, str) and value:
                changes[f.name] = os.path.abspath(base / value)
        return dataclasses.replace(obj, **changes)

    return fix(cfg)


def write_params(raw: dict[str, Any], path: str | Path = "params.yaml") -> None:
    header = (
        "# Generated by `wm compose` from wm/conf (Hydra). Edit wm/conf and re-compose,\n"
        "# or override per run: `dvc exp run -S collect.frames=1000`, `dvc exp run -S preset=debug`.\n"
    )
    Path(path).write_text(header + yaml.safe_dump(raw, sort_keys=False))
