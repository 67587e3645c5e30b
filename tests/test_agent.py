import dataclasses

import pytest
import torch

from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.objectives.mtp import mtp_targets, reward_targets


def test_mtp_targets_shift_and_mask():
    x = torch.tensor([[1, 2, 3, 4]])
    tgt, valid = mtp_targets(x, 3, fill=-1)
    assert tgt[0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, -1], [4, -1, -1]]
    assert valid[0].tolist() == [[True] * 3, [True] * 3, [True, True, False], [True, False, False]]
    r = torch.tensor([[10.0, 20.0, 30.0]])
    tgt, valid = reward_targets(r, 2)
    assert tgt[0].tolist() == [[0.0, 10.0], [10.0, 20.0], [20.0, 30.0]]
    assert valid[0].tolist() == [[False, True], [True, True], [True, True]]


@pytest.mark.parametrize("dyn_kw", [{"prev_input": False}, {"pack": 2, "prev_input": True}])
def test_agent_tokens_do_not_change_dynamics_predictions(debug_cfg, dyn_kw):
    torch.manual_seed(0)
    dyn = Dynamics(dataclasses.replace(debug_cfg.dynamics, **dyn_kw), n_actions=10, n_latents=4, latent_dim=3).eval()
    agent = Agent(dyn, n_tasks=2, mtp=8, bins=41).eval()
    z = torch.randn(2, 5, 4, 3)
    tau = torch.rand(2, 5)
    d = torch.full((2,), 0.25)
    a = torch.randint(-1, 10, (2, 5))
    alone = dyn(z, tau, d, a)
    with_agent, feat = agent(z, tau, d, a, torch.tensor([0, 1]))
    torch.testing.assert_close(with_agent, alone, atol=1e-5, rtol=1e-5)  # float reorder only
    assert feat.shape == (2, 5, debug_cfg.dynamics.model.dim)
    assert agent.policy_logits(feat).shape == (2, 5, 8, 10)
    assert agent.reward_logits(feat).shape == (2, 5, 8, 41)
    # the agent token reads the frame: different latents, different features
    _, feat2 = agent(z + 1, tau, d, a, torch.tensor([0, 1]))
    assert not torch.allclose(feat, feat2)
    # and the task embedding conditions it
    _, feat3 = agent(z, tau, d, a, torch.tensor([1, 0]))
    assert not torch.allclose(feat, feat3)


def check_vector_env_api(env, n_envs: int, n_actions: int, height: int, width: int) -> None:
    """The contract both the real and the imagined env honour (what collection/eval/RL rely on)."""
    import numpy as np

    obs, info = env.reset(seed=3)
    assert obs.shape == (n_envs, height, width, 3) and obs.dtype == np.uint8
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.arange(n_envs) % n_actions)
        assert obs.shape == (n_envs, height, width, 3) and obs.dtype == np.uint8
        assert np.asarray(reward).shape == (n_envs,) and np.isfinite(np.asarray(reward, dtype=float)).all()
        assert np.asarray(terminated).shape == (n_envs,) and np.asarray(truncated).shape == (n_envs,)
        assert isinstance(info, dict)


def test_real_and_imagined_envs_pass_the_same_api_test(debug_cfg):
    from wm.envs.imagined import ImaginedEnv
    from wm.envs.vector import make_vector_env
    from wm.models.tokenizer import Tokenizer

    n_actions = len(debug_cfg.env.action_map)
    real = make_vector_env(debug_cfg.env, 2)
    try:
        check_vector_env_api(real, 2, n_actions, debug_cfg.env.height, debug_cfg.env.width)
    finally:
        real.close()
    torch.manual_seed(0)
    tok = Tokenizer(debug_cfg.tokenizer, debug_cfg.env.height, debug_cfg.env.width).eval()
    dyn = Dynamics(debug_cfg.dynamics, n_actions, tok.cfg.n_latents, tok.cfg.latent_dim)
    agent = Agent(dyn, n_tasks=1, mtp=4, bins=41).eval()

    def contexts(seed):
        g = torch.Generator().manual_seed(seed)
        return {"latents": torch.tanh(torch.randn(2, 3, tok.cfg.n_latents, tok.cfg.latent_dim, generator=g)),
                "actions": torch.randint(0, n_actions, (2, 3), generator=g)}

    from wm.world_model import WorldModel

    imagined = ImaginedEnv(WorldModel(agent, ctx_noise=0.1, steps=2, tokenizer=tok), contexts, 2, max_steps=3)
    check_vector_env_api(imagined, 2, n_actions, debug_cfg.env.height, debug_cfg.env.width)
    # the same seed gives the same imagined episode
    a, _ = imagined.reset(seed=5)
    o1 = imagined.step([1, 2])[0]
    imagined.reset(seed=5)
    assert (imagined.step([1, 2])[0] == o1).all()

    # the reward rate is the mean of the rewards the env returns for those seeds and actions
    from wm.envs.imagined import imagined_reward_rate

    torch.nn.init.normal_(agent.frame_reward_head[-1].weight)  # zero-initialised: give it something to say
    act = lambda info, t: (torch.arange(info["features"].shape[0]) + t) % n_actions  # noqa: E731
    manual = []
    for seed in (7, 8):
        _, info = imagined.reset(seed=seed)
        for t in range(imagined.max_steps):
            _, r, _, _, info = imagined.step(act(info, t))
            manual.extend(r.tolist())
            assert ((info["continue"] > 0) & (info["continue"] < 1)).all()
    assert len(set(manual)) > 1
    assert imagined_reward_rate(imagined, act, [7, 8])["reward"] == pytest.approx(sum(manual) / len(manual), rel=1e-6)
    # kills: the scorer sees (previous latents, new latents) of every step; a constant scorer gives its constant
    seen = []

    def kill_prob(pairs):
        seen.append(pairs.shape)
        return torch.full((pairs.shape[0],), 0.25)

    rates = imagined_reward_rate(imagined, act, [7], kill_prob)
    assert rates["kills"] == pytest.approx(0.25) and len(seen) == imagined.max_steps
    assert seen[0][:2] == (imagined.num_envs, 2)
    with pytest.raises(ValueError, match="at least one seed"):
        imagined_reward_rate(imagined, act, [])


def test_frame_reward_head_reads_the_frames_latents(debug_cfg):
    """A reward the agent features cannot see but this frame's latents show (an "explosion" in
    one latent, 1 step in ~16): the frame reward head fitted by ``fit_heads`` ranks it and prices
    it at the data's rate on held-out rows; and it reads the latents in the order (previous, this)."""
    from wm.objectives.twohot import make_bins, twohot_decode
    from wm.training.heads import fit_heads, head_metrics

    torch.manual_seed(0)
    dyn = Dynamics(debug_cfg.dynamics, n_actions=4, n_latents=4, latent_dim=3)
    agent = Agent(dyn, n_tasks=1, mtp=2, bins=41)
    dim = debug_cfg.dynamics.model.dim

    def rows(n, seed):
        g = torch.Generator().manual_seed(seed)
        feat, z_prev, z = torch.randn(n, dim, generator=g), torch.randn(n, 4, 3, generator=g), torch.randn(n, 4, 3, generator=g)
        reward = (z[:, 2, 1] > 1.55).float() * 20  # ~6 % of rows
        return {"feat": feat, "frame": agent.frame_input(feat, z_prev, z), "reward": reward,
                "cont": torch.ones(n), "z_prev": z_prev, "z": z}

    train, val = rows(20000, 1), rows(8000, 2)
    logs = fit_heads(agent, train, steps=600, batch=512, lr=1e-3)
    assert 0 < logs["heads/step_kept"] <= 600 and logs["heads/held_rows"] == 2000  # every 10th row's clip
    m = head_metrics(agent, val)
    assert m["reward/auc"] > 0.95
    assert abs(m["reward/pred_per_step"] / m["reward/data_per_step"] - 1) < 0.25
    # swapped frames: the event is read from the later one only
    bins = make_bins(41)
    x_swapped = agent.frame_input(val["feat"], val["z"], val["z_prev"])
    with torch.no_grad():
        swapped = twohot_decode(agent.frame_reward_logits(x_swapped), bins)
        straight = twohot_decode(agent.frame_reward_logits(val["frame"]), bins)
    hit = val["reward"] > 0
    assert straight[hit].mean() > 3 * swapped[hit].mean()


def test_kill_pairs_hold_this_and_the_previous_frame_and_the_kill_after():
    """The kill probe's rows (finetune_agent and scripts/kill_probe_spread.py): per transition, this
    frame's latents, then the previous frame's, and whether the reward of that transition is a kill."""
    from wm.training.heads import kill_pairs

    z = torch.arange(6, dtype=torch.float32).reshape(2, 3, 1, 1)  # two clips of three frames
    rewards = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    pairs, kill = kill_pairs(z, rewards)
    assert pairs.shape == (4, 2, 1, 1)
    assert pairs.flatten(1).tolist() == [[1, 0], [2, 1], [4, 3], [5, 4]]
    assert kill.tolist() == [False, True, False, False]  # the last frame's reward has no next frame


def test_agent_held_out_set_is_spread_over_the_val_split_whatever_the_batch_size(debug_data, debug_raw):
    """finetune_agent scores fixed batches of EVAL_BATCH val clips, the same at any training batch
    size or seed; agent.eval_batches picks that many of them first to last (0: all)."""
    from conftest import make_cfg
    from wm.data.shards import count_clips
    from wm.stages.finetune_agent import EVAL_BATCH, val_batches

    shards = debug_data["cfg"].shard.out_dir
    clip_len = 2
    base = (f"latents.out_dir={shards}", f"agent.train.clip_len={clip_len}")
    full = [val_batches(make_cfg(debug_raw, *base, "agent.eval_batches=0", f"agent.train.batch_size={b}",
                                 f"agent.train.seed={s}")) for b, s in ((2, 0), (5, 1))]
    clips = count_clips(shards, "val", clip_len)
    per_batch = min(EVAL_BATCH, clips)
    for batches in full:
        assert sum(len(b["frames"]) for b in batches) == clips // per_batch * per_batch > 0
        assert all(b["frames"].shape[:2] == (per_batch, clip_len) for b in batches)
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(*full))
    assert len(full[0]) >= 3  # the debug split holds enough clips to test the spread: first, middle, last
    picked = val_batches(make_cfg(debug_raw, *base, "agent.eval_batches=3"))
    at = [next(i for i, b in enumerate(full[0]) if torch.equal(b["frames"], p["frames"])) for p in picked]
    assert at == [0, round((len(full[0]) - 1) / 2), len(full[0]) - 1]


def test_held_out_reward_figures_of_an_untrained_head_are_the_zero_predictors(debug_cfg):
    """A fresh reward head (zero output layer: uniform over symmetric bins) predicts 0 reward, so
    evaluate_agent's MAE/MSE are the mean |r| / mean r^2 of the targets (the rewards into frames
    1..T-1), its AUC is chance, and the baselines are the set's mean reward's errors, by hand."""
    from wm.stages.finetune_agent import evaluate_agent

    torch.manual_seed(0)
    dyn = Dynamics(debug_cfg.dynamics, n_actions=4, n_latents=4, latent_dim=3)
    agent = Agent(dyn, n_tasks=1, mtp=2, bins=41).eval()
    rewards = torch.tensor([[0.0, 20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0, 0.0]])
    batches = [{"latents": torch.rand(2, 5, 4, 3) * 2 - 1, "actions": torch.randint(0, 4, (2, 5)),
                "rewards": rewards[i : i + 1].expand(2, -1)} for i in range(2)]
    cfg = dataclasses.replace(debug_cfg, agent=dataclasses.replace(debug_cfg.agent, mtp=2))
    out = evaluate_agent(agent, batches, cfg)
    target = torch.cat([rewards[:, :-1]] * 2)  # what each frame's offset-0 reward is scored against
    mean = rewards.mean()  # the mean over the whole held-out set, every step
    assert out["val/reward_mae"] == pytest.approx(target.abs().mean().item(), abs=1e-4)
    assert out["val/reward_mse"] == pytest.approx(target.pow(2).mean().item(), abs=1e-3)
    assert out["val/reward_mae_mean_baseline"] == pytest.approx((target - mean).abs().mean().item(), abs=1e-5)
    assert out["val/reward_mse_mean_baseline"] == pytest.approx((target - mean).pow(2).mean().item(), abs=1e-4)
    assert out["val/reward_auc"] == pytest.approx(0.5)
