"""The action-free experiment: episodes without labels reach the dynamics as action-free video
(no action embedding, no action or reward target) or not at all, and `wm action-free` trains and
measures its three arms end to end on the debug preset."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import init_tokenizer_and_latents, make_cfg
from wm.data.shards import episode_labels, make_clip_loader, read_manifest
from wm.training.trainer import CHECKPOINT


@pytest.fixture(scope="module")
def latents_cfg(debug_data, debug_raw, tmp_path_factory):
    base = tmp_path_factory.mktemp("action_free")
    cfg = make_cfg(debug_raw, f"latents.in_dir={debug_data['cfg'].shard.out_dir}",
                   f"shard.out_dir={debug_data['cfg'].shard.out_dir}", f"latents.out_dir={base / 'latents'}",
                   f"tokenizer.out_dir={base / 'tok'}", f"action_free.out_dir={base / 'action_free'}",
                   "action_free.labeled_frac=0.5")
    init_tokenizer_and_latents(base, cfg)
    return base, cfg


def _episodes_seen(cfg, labels, batches=30):
    loader = make_clip_loader(cfg.latents.out_dir, "train", 4, 2, infinite=True, seed=0, labels=labels)
    seen = {}
    for _, b in zip(range(batches), loader):
        for key, free in zip(b["key"], b["action_free"].tolist()):
            seen[int(key[2:8])] = free
    return seen


def test_a_single_reader_keeps_latent_shards_in_memory(latents_cfg, tmp_path):
    """A latent stream read by one process keeps each shard it has read in memory: the next
    epochs yield the same clips as re-reading the files (the same labelled selection, order and
    offsets), and without the files; frame shards and several ranks read the files each time."""
    import shutil

    from wm.data.shards import ClipDataset

    _, cfg = latents_cfg
    labels = episode_labels(cfg.latents.out_dir, "train", 0.5, 0, drop=True)
    copy = tmp_path / "latents"
    shutil.copytree(cfg.latents.out_dir, copy)
    entries = read_manifest(copy)["splits"]["train"]["shards"]
    shards = [(copy / e["file"], e["chunks"]) for e in entries]

    def epochs(ds, n):
        return [[(c["key"], c["latents" if "latents" in c else "frames"].float().sum().item(), c["action_free"]) for c in ds._clips(e, 0, 1)] for e in range(n)]

    kept = ClipDataset(shards, 4, seed=1, labels=labels)
    first = epochs(kept, 3)
    assert len(kept._cache) == len(shards) and first[0] and first[1] != first[0]  # offsets and order re-drawn
    assert {int(k[2:8]) for k, _, _ in first[0]} <= labels.labeled  # only the labelled episodes were kept
    assert epochs(ClipDataset(shards, 4, seed=1, labels=labels), 3) == first  # same as reading the files
    shutil.rmtree(copy / "train")
    assert epochs(kept, 3) == first  # from memory alone
    two_ranks = ClipDataset([(Path(cfg.latents.out_dir) / e["file"], e["chunks"]) for e in entries], 4,
                            seed=1, rank=0, world_size=2)
    assert epochs(two_ranks, 1)[0] and not two_ranks._cache
    frames = ClipDataset([(Path(cfg.shard.out_dir) / e["file"], e["chunks"])
                          for e in read_manifest(cfg.shard.out_dir)["splits"]["train"]["shards"]], 4)
    assert epochs(frames, 1) and not frames._cache


def test_unlabelled_episodes_become_video_or_are_left_out(latents_cfg):
    _, cfg = latents_cfg
    episodes = sorted(e["episode"] for e in read_manifest(cfg.latents.out_dir)["splits"]["train"]["episodes"])
    assert len(episodes) >= 2
    video = episode_labels(cfg.latents.out_dir, "train", 0.5, 0, drop=False)
    assert 0 < len(video.labeled) < len(episodes)
    seen = _episodes_seen(cfg, video)
    assert set(seen) == set(episodes)  # every episode still trains the dynamics ...
    assert all(free == (ep not in video.labeled) for ep, free in seen.items())  # ... the unlabelled ones action-free
    dropped = _episodes_seen(cfg, episode_labels(cfg.latents.out_dir, "train", 0.5, 0, drop=True))
    assert set(dropped) == set(video.labeled) and not any(dropped.values())
    assert episode_labels(cfg.latents.out_dir, "train", 1.0, 0, drop=True) is None  # all labelled: nothing changes


def test_labelled_share_per_batch_is_fixed(latents_cfg):
    """With 10 % of the episodes labelled, the dynamics still gets labelled clips in
    1 - video_share of its batches (not in 10 % of its clips): each batch is all labelled
    (labelled episodes only) or all action-free (the others only)."""
    import dataclasses

    from wm.stages.train_dynamics import batch_schedule
    from wm.training.distributed import DistInfo

    _, cfg = latents_cfg
    dyn = dataclasses.replace(cfg.dynamics, labeled_frac=0.5, unlabeled="video", video_share=0.25,
                              single_frame_frac=0.0, long_every=0)
    cfg = dataclasses.replace(cfg, dynamics=dyn)
    labels = episode_labels(cfg.latents.out_dir, "train", 0.5, dyn.train.seed, drop=True)
    kinds = []
    for _, b in zip(range(40), batch_schedule(cfg, DistInfo(), 0)):
        episodes = {int(key[2:8]) for key in b["key"]}
        free = set(b["action_free"].tolist())
        assert len(free) == 1, "a batch mixes labelled and action-free clips"
        assert (episodes <= labels.labeled) if free == {False} else not (episodes & labels.labeled)
        kinds.append(free.pop())
    assert 4 <= sum(kinds) <= 18  # ~25 % of 40 batches action-free (seeded draws)
    dropped = dataclasses.replace(cfg, dynamics=dataclasses.replace(dyn, unlabeled="drop"))
    assert not any(b["action_free"].any() for _, b in zip(range(10), batch_schedule(dropped, DistInfo(), 0)))


@pytest.mark.timeout(1800)  # four arms trained and evaluated: slow on a busy 2-core runner
def test_action_free_experiment_end_to_end(latents_cfg):
    from wm.stages.train_dynamics import run_action_free

    base, cfg = latents_cfg
    cwd = os.getcwd()
    os.chdir(base)
    try:  # one arm alone (as parallel processes run them): no summary until every arm is done
        import dataclasses

        run_action_free(dataclasses.replace(cfg, action_free=dataclasses.replace(cfg.action_free, arm="labeled_only")))
        assert not (base / "data/metrics/action_free.json").exists()
        assert sorted(p.name for p in (base / "action_free").iterdir()) == ["labeled_only"]
        out = run_action_free(cfg)
        saved = json.loads((base / "action_free" / "action_free.json").read_text())
        # the DVC stage's tracked metric is the summary of the run in the default out_dir only
        assert not (base / "data/metrics/action_free.json").exists()
        assert not (base / "data/eval/action_free.png").exists()
        from PIL import Image

        assert Image.open(base / "action_free" / "action_free.png").size == (640, 400)
    finally:
        os.chdir(cwd)
    h, k = cfg.dynamics.horizon, cfg.dynamics.sample_steps
    for arm in ("full", "labeled_plus_video", "labeled_only"):
        assert (base / "action_free" / arm / "checkpoint" / CHECKPOINT).exists()
        assert saved[f"gap/{arm}"] == pytest.approx(saved[f"psnr_h4/k{k}/{arm}"] - json.loads(
            (base / "action_free" / arm / "data/metrics/dynamics.json").read_text())[f"psnr_h4/k{k}_shuffled_actions"])
        assert f"psnr_h{h}/k{k}/{arm}" in saved
    assert 0 < saved["labeled_episodes"] < saved["train_episodes"] and saved == json.loads(json.dumps(out))
    # every arm also scored on every held-out clip (cached beside its checkpoint), with paired differences
    assert saved["heldout/clips"] >= cfg.action_free.eval_clips and saved["heldout/episodes"] >= 1
    assert 0 < saved[f"heldout/psnr_h{h}/repeat_last"] < 100
    for fig in ("gap", f"psnr_h{h}"):
        assert saved[f"heldout/{fig}/labeled_plus_video_minus_labeled_only"] == pytest.approx(
            saved[f"heldout/{fig}/labeled_plus_video"] - saved[f"heldout/{fig}/labeled_only"])
    if saved["heldout/clips"] == saved["eval_clips"]:  # the same clips and noise: the training run's figures
        assert saved["heldout/gap/full"] == pytest.approx(saved["gap/full"], abs=1e-4)
    assert all((base / "action_free" / arm / "heldout_errors.npz").exists() for arm in ("full", "labeled_only"))
    assert Image.open(base / "action_free" / "action_free_heldout.png").size[0] == 640
    # matched steps: the video arm sees as many labelled batches as the others see steps
    steps, share = cfg.action_free.steps, cfg.dynamics.video_share
    assert saved["steps/full"] == saved["steps/labeled_only"] == steps
    assert saved["steps/labeled_plus_video"] == round(steps / (1 - share)) > steps
    # a finished arm of another length is never reused as if it were this run's
    from wm.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="labeled_plus_video arm with other settings .*dynamics.train.steps"):
        run_action_free(dataclasses.replace(cfg, action_free=dataclasses.replace(cfg.action_free, video_steps="same")))
    # nor one with another labelled share (the full arm, every episode labelled, is the same arm) ...
    with pytest.raises(ConfigValueError, match="labeled_plus_video arm with other settings .*dynamics.labeled_frac"):
        run_action_free(dataclasses.replace(cfg, action_free=dataclasses.replace(cfg.action_free, labeled_frac=0.25)))
    # ... while other threads or a compiled model change speed, not the arm: reused as it is (here
    # from the default out_dir, whose summary is also the DVC stage's metric)
    (base / "data").mkdir(exist_ok=True)
    (base / "action_free").rename(base / "data" / "action_free")
    ckpts = {arm: (base / "data/action_free" / arm / "checkpoint" / CHECKPOINT).stat().st_mtime_ns
             for arm in ("full", "labeled_plus_video", "labeled_only")}
    # held-out errors cached on another kind of device (CUDA draws other noise) are not paired with
    # this run's: the arm is scored again (the summary below equals the first one only if it is)
    import numpy as np

    assert saved["heldout/device"] == "cpu"
    cache = base / "data/action_free/labeled_only/heldout_errors.npz"
    kept = dict(np.load(cache))
    assert str(kept["device"]) == "cpu"
    np.savez(cache, **{**kept, "true": kept["true"] * 2, "device": "cuda"})
    fast = dataclasses.replace(cfg.dynamics, train=dataclasses.replace(cfg.dynamics.train, threads=1, compile=True,
                                                                               ckpt_every=1))
    cwd = os.getcwd()
    os.chdir(base)
    try:
        again = run_action_free(dataclasses.replace(cfg, dynamics=fast, action_free=dataclasses.replace(
            cfg.action_free, out_dir="data/action_free")))
    finally:
        os.chdir(cwd)
    assert again == out and ckpts == {
        arm: (base / "data/action_free" / arm / "checkpoint" / CHECKPOINT).stat().st_mtime_ns for arm in ckpts}
    assert json.loads((base / "data/metrics/action_free.json").read_text()) == saved
    assert str(np.load(cache)["device"]) == "cpu"
    assert (base / "data/eval/action_free.png").read_bytes() == (base / "data/action_free/action_free.png").read_bytes()
    assert (base / "data/eval/action_free_heldout.png").read_bytes() == (
        base / "data/action_free/action_free_heldout.png").read_bytes()


def test_action_free_clips_never_reach_action_or_reward_losses(debug_cfg):
    """Garbage actions, rewards and continuations on action-free rows change nothing but the
    dynamics loss (which trains on their frames with the "no action" embedding)."""
    from wm.models.agent import Agent
    from wm.models.dynamics import Dynamics
    from wm.stages.finetune_agent import AgentLoss

    cfg = debug_cfg
    torch.manual_seed(0)
    n_actions = len(cfg.env.action_map)
    dyn = Dynamics(cfg.dynamics, n_actions, cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim)
    agent = Agent(dyn, n_tasks=1, mtp=cfg.agent.mtp, bins=cfg.agent.bins)
    for head in (agent.reward_head, agent.cont_head):  # zero-initialised heads would ignore any target
        torch.nn.init.normal_(head[-1].weight)
    loss_fn = AgentLoss(cfg)
    g = torch.Generator().manual_seed(1)
    b, t = 4, 6
    batch = {"latents": torch.randn(b, t, cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim, generator=g),
             "actions": torch.randint(0, n_actions, (b, t), generator=g),
             "rewards": (torch.rand(b, t, generator=g) < 0.2).float() * 20,
             "continues": torch.ones(b, t), "action_free": torch.tensor([False, True, False, True])}
    garbage = {**batch, "actions": batch["actions"].clone(), "rewards": batch["rewards"].clone(),
               "continues": batch["continues"].clone()}
    garbage["actions"][1::2] = torch.randint(0, n_actions, (2, t), generator=g)
    garbage["rewards"][1::2] = 1000.0
    garbage["continues"][1::2] = 0.0

    def terms(x):
        torch.manual_seed(5)  # the same noise draws in both calls
        _, logs = loss_fn(agent, x)
        return {k: logs[k] for k in ("agent/train/bc", "agent/train/reward", "agent/train/cont",
                                     "dynamics/train/loss")}

    assert terms(batch) == pytest.approx(terms(garbage), rel=1e-6)
    # the labelled rows do reach them: changing their targets changes every term
    changed = {**batch, "actions": batch["actions"].clone(), "rewards": batch["rewards"].clone(),
               "continues": batch["continues"].clone()}
    changed["actions"][0] = (changed["actions"][0] + 1) % n_actions
    changed["rewards"][0] = 1000.0
    changed["continues"][0] = 0.0
    before, after = terms(batch), terms(changed)
    for k in ("agent/train/bc", "agent/train/reward", "agent/train/cont"):
        assert after[k] != pytest.approx(before[k]), k


def test_seed_summary_means_and_checks(tmp_path):
    """scripts/action_free_seeds.py: per labelled share, mean and sd over seeds, the paired
    video-minus-labelled-only difference, and the issue's three checks on the means."""
    from conftest import load_script

    mod = load_script("action_free_seeds")

    def run(seed, full, video, only, h_video, h_only):
        return {"labeled_frac": 0.1, "seed": seed, "steps": 100, "steps/labeled_plus_video": 200,
                "gap/full": full, "gap/labeled_plus_video": video, "gap/labeled_only": only,
                "psnr_h16/k4/full": 25.0, "psnr_h16/k4/labeled_plus_video": h_video,
                "psnr_h16/k4/labeled_only": h_only, "psnr_h16/k4_shuffled_actions/full": 23.0,
                "psnr_h4/k4/full": 28.0, "psnr_h16/repeat_last": 23.2}

    paths = []
    for i, r in enumerate([run(0, 3.0, 2.5, 2.0, 24.9, 24.7), run(1, 3.2, 2.1, 2.4, 24.7, 24.8)]):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(r))
    out = tmp_path / "seeds.json"
    assert mod.main([str(p) for p in paths] + [str(tmp_path / "missing.json"), "--out", str(out)]) == 0
    share = json.loads(out.read_text())["labeled_frac"]["0.1"]
    assert share["seeds"] == [0, 1] and share["steps"]["labeled_plus_video"] == 200
    assert share["gap/full"]["mean"] == pytest.approx(3.1) and share["gap/full"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert share["gap/video_minus_only"]["values"] == pytest.approx([0.5, -0.3])
    assert share["psnr_h16/k4/video_minus_only"]["mean"] == pytest.approx(0.05)
    assert "heldout" not in share  # summaries from before the held-out comparison
    for i, (d, ci) in enumerate([(0.4, [0.1, 0.7]), (-0.2, [-0.6, 0.2])]):
        r = json.loads(paths[i].read_text())
        r.update({"heldout/clips": 204, "heldout/gap/labeled_plus_video_minus_labeled_only": d,
                  "heldout/gap/labeled_plus_video_minus_labeled_only_ci95": ci, "heldout/gap/full": 3.0,
                  "heldout/psnr_h16/repeat_last": 22.6})
        paths[i].write_text(json.dumps(r, sort_keys=True))  # as the summaries are written: heldout/ first
    assert mod.main([str(p) for p in paths] + ["--out", str(out)]) == 0
    held = json.loads(out.read_text())["labeled_frac"]["0.1"]["heldout"]
    assert held["clips"] == 204 and list(held) == ["seeds", "clips", "gap/labeled_plus_video_minus_labeled_only"]
    assert held["gap/labeled_plus_video_minus_labeled_only"]["mean"] == pytest.approx(0.1)
    assert held["gap/labeled_plus_video_minus_labeled_only"]["ci95"] == [[0.1, 0.7], [-0.6, 0.2]]
    assert "checks" not in held  # the per-arm held-out figures are not all there
    for i, r in enumerate(json.loads(p.read_text()) for p in paths):
        r.update({f"heldout/{fig}/{arm}": v + i for fig, vals in (("gap", (3.0, 2.4, 2.2)), ("psnr_h16", (25.0, 24.8, 24.9)))
                  for arm, v in zip(("full", "labeled_plus_video", "labeled_only"), vals)})
        paths[i].write_text(json.dumps(r))
    assert mod.main([str(p) for p in paths] + ["--out", str(out)]) == 0
    held = json.loads(out.read_text())["labeled_frac"]["0.1"]["heldout"]
    assert held["gap/full"]["mean"] == pytest.approx(3.5)
    assert held["checks"] == {"gap_video >= 0.7 gap_full": True, "gap_video > gap_only": True,
                              "psnr_h16_video > psnr_h16_only": False}
    checks = share["checks"]
    assert checks["gap_video >= 0.7 gap_full"] is True  # 2.3 >= 2.17
    assert checks["gap_video > gap_only"] is True  # 2.3 > 2.2
    assert checks["psnr_h16/k4_video > psnr_h16/k4_only"] is True  # 24.8 > 24.75
    assert mod.main([str(tmp_path / "missing.json"), "--out", str(out)]) == 1


def test_gpu_inputs_hold_the_held_out_shards_and_a_loadable_tokenizer(latents_cfg, tmp_path):
    """scripts/gpu_inputs.py: the held-out shards whole, the training list cut to the shards
    copied (the manifest still verifies), and the tokenizer without its optimizer state but with
    the same weights fingerprint (so the DVC stage reuses arms trained on those inputs on a GPU)."""
    from conftest import load_script
    from wm.data.shards import shard_paths
    from wm.world_model import load_tokenizer

    mod = load_script("gpu_inputs")
    _, cfg = latents_cfg
    out = tmp_path / "gpu"
    assert mod.main(["--shards", cfg.shard.out_dir, "--tokenizer", cfg.tokenizer.out_dir, "--out", str(out),
                     "--train-shards", "1"]) == 0
    assert len(shard_paths(out / "shards", "train")) == 1  # sha256 checked against the cut manifest
    assert len(shard_paths(out / "shards", "val")) == len(shard_paths(cfg.shard.out_dir, "val"))
    from wm.data.shards import sha256_file
    from wm.training.checkpoint import weights_sha256

    copy, orig = out / "tokenizer" / "checkpoint.pt", Path(cfg.tokenizer.out_dir) / "checkpoint.pt"
    assert sorted(torch.load(copy, weights_only=False)) == ["config", "model", "step"]
    assert sha256_file(copy) != sha256_file(orig) and weights_sha256(copy) == weights_sha256(orig)
    load_tokenizer(out / "tokenizer")
    state = torch.load(copy, weights_only=False)
    name = sorted(state["model"])[0]
    state["model"][name] = state["model"][name] + 1e-3  # another tokenizer: another fingerprint
    torch.save(state, copy)
    assert weights_sha256(copy) != weights_sha256(orig)
    assert mod.main(["--shards", str(tmp_path / "none"), "--out", str(out)]) == 1


def test_heldout_comparison_pairs_arms_and_resamples_episodes():
    """compare_heldout on made-up per-clip errors: the figures are the pooled PSNRs computed by
    hand, a difference between two arms is paired (an arm compared with its own copy gives
    exactly 0 with a zero-width interval), and the interval widens with the spread between
    episodes, not between the clips of one episode."""
    import numpy as np

    from wm.stages.train_dynamics import compare_heldout

    episodes = np.repeat(np.arange(6), 4)  # 6 episodes of 4 clips
    horizon = 8
    base = np.full((24, horizon), 1e-3)
    noisy = base * np.repeat(np.linspace(0.5, 1.5, 6), 4)[:, None]  # episodes differ, clips within one do not
    errors = {
        "full": {"true": base, "shuffled": base * 2},  # shuffled actions double the error: gap 10 log10 2
        "labeled_plus_video": {"true": noisy, "shuffled": noisy * 2},
        "labeled_only": {"true": base, "shuffled": base * 2},
    }
    out = compare_heldout(errors, episodes, boot=400)
    assert out["clips"] == 24 and out["episodes"] == 6
    assert out["gap/full"] == pytest.approx(10 * np.log10(2)) and out["psnr_h8/full"] == pytest.approx(30.0)
    assert out["psnr_h8/labeled_plus_video"] == pytest.approx(-10 * np.log10(noisy.mean()))
    assert out["gap/full_minus_labeled_only"] == 0 and out["gap/full_minus_labeled_only_ci95"] == [0, 0]
    assert out["psnr_h8/full_minus_labeled_only_ci95"] == [0, 0]
    lo, hi = out["psnr_h8/labeled_plus_video_minus_labeled_only_ci95"]
    assert lo < out["psnr_h8/labeled_plus_video_minus_labeled_only"] < hi and hi - lo > 0.5
    # the gap is a ratio of errors within each clip: scaling whole episodes leaves it unchanged
    assert out["gap/labeled_plus_video_minus_full"] == pytest.approx(0, abs=1e-9)
    assert out["gap/labeled_plus_video_minus_full_ci95"] == pytest.approx([0, 0], abs=1e-9)
    # the trivial predictor: repeating the last context frame, errors by hand
    from wm.stages.train_dynamics import repeat_last_errors

    frames = torch.zeros(2, 5, 3, 2, 2, dtype=torch.uint8)
    frames[0, 3:] = 255  # clip 0: black context, white future -> error 1 on both predicted frames
    frames[1, 4, 0] = 255  # clip 1: one channel of the last frame turns on -> 1/3 there, 0 before
    assert repeat_last_errors(frames, 3).tolist() == [[1.0, 1.0], [0.0, pytest.approx(1 / 3)]]
    # one held-out episode: the figures, but no interval
    single = compare_heldout(errors, np.zeros(24, dtype=int), boot=10)
    assert single["gap/full"] == out["gap/full"] and single["gap/full_ci95"] is None
