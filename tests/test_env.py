import dataclasses

import numpy as np
import pytest

from wm.envs.policies import StickyRandomPolicy, make_policy
from wm.envs.retro import GameNotFoundError, RetroEnv, RomNotFoundError, build_button_table, check_game
from wm.envs.rollout import play_episode

BUTTONS = ["B", "A", "MODE", "START", "UP", "DOWN", "LEFT", "RIGHT", "C", "Y", "X", "Z"]


def test_action_map_to_buttons(debug_cfg):
    table = build_button_table(debug_cfg.env.action_map, BUTTONS, "Airstriker-Genesis-v0")
    assert table.shape == (10, 12)
    assert table[0].sum() == 0  # noop
    up_fire = debug_cfg.env.action_map.index(["UP", "B"])
    assert set(np.flatnonzero(table[up_fire])) == {BUTTONS.index("UP"), BUTTONS.index("B")}
    assert len({tuple(r) for r in table}) == 10  # every action distinct
    with pytest.raises(ValueError, match="does not have"):
        build_button_table([["FIRE"]], BUTTONS, "Airstriker-Genesis-v0")


def test_env_steps_report_buttons_and_resize(debug_cfg):
    env = RetroEnv(debug_cfg.env)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    frames_before = env.emu_frames
    obs, reward, term, trunc, info = env.step(6)
    assert np.array_equal(info["buttons"], env.button_table[6])
    assert env.emu_frames - frames_before == debug_cfg.env.frameskip
    with pytest.raises(ValueError, match="outside the action map"):
        env.step(10)
    env.close()


def test_episode_is_deterministic_given_seed(debug_cfg):
    env = RetroEnv(debug_cfg.env)
    policy = make_policy("random", env.action_space.n)
    a = play_episode(env, policy, seed=7)
    b = play_episode(env, policy, seed=7)
    c = play_episode(env, policy, seed=8)
    env.close()
    assert len(a) == debug_cfg.env.max_episode_steps
    for name in ("frames", "actions", "buttons", "rewards", "terminals"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.actions, c.actions)
    assert a.frames.std() > 0  # real frames, not blank


def test_sticky_actions_repeat_previous(debug_cfg):
    env_cfg = dataclasses.replace(debug_cfg.env, sticky_prob=1.0)
    env = RetroEnv(env_cfg)
    env.reset(seed=0)
    applied = [env.step(a)[4]["action"] for a in (3, 5, 7)]
    env.close()
    assert applied == [0, 0, 0]  # always the previous action, which starts at noop


def test_sticky_random_policy_holds_actions():
    policy = StickyRandomPolicy(10, mean_steps=8.0)
    policy.reset(np.random.default_rng(0))
    acts = np.array([policy.act(None) for _ in range(4000)])
    switches = np.count_nonzero(np.diff(acts))
    assert 300 < switches < 600  # ~ 4000/8 * 9/10 changes


def test_unknown_game_lists_close_matches():
    with pytest.raises(GameNotFoundError, match="Close matches: Airstriker-Genesis-v0"):
        check_game("Airstriker-Genesis")


def test_missing_rom_names_import_command():
    with pytest.raises(RomNotFoundError, match=r"python -m stable_retro.import"):
        check_game("SonicTheHedgehog-Genesis-v0")


def test_unknown_state_is_an_error():
    with pytest.raises(GameNotFoundError, match="available: Level1"):
        check_game("Airstriker-Genesis-v0", "Level9")


def test_vector_env_uses_subprocesses(debug_cfg):
    from wm.envs.vector import make_vector_env

    venv = make_vector_env(debug_cfg.env, 2)
    try:
        obs, _ = venv.reset(seed=[0, 1])
        assert obs.shape == (2, 64, 64, 3)
        obs, rew, term, trunc, info = venv.step(np.array([1, 6]))
        assert rew.shape == (2,)
        table = build_button_table(debug_cfg.env.action_map, BUTTONS, debug_cfg.env.game)
        assert np.array_equal(info["buttons"][0], table[1]) and np.array_equal(info["buttons"][1], table[6])
    finally:
        venv.close()


def _spy(env):
    """Record the buttons and raw frames each emulator step gets/returns."""
    calls, frames = [], []
    step = env._emu.step

    def spy(buttons):
        calls.append(np.array(buttons).copy())
        out = step(buttons)
        frames.append(out[0].copy())
        return out

    env._emu.step = spy
    return calls, frames


@pytest.mark.parametrize("mode", ["tap", "hold"])
def test_fire_mode_tap_presses_b_on_the_first_frame_only(debug_cfg, mode):
    env = RetroEnv(dataclasses.replace(debug_cfg.env, fire_mode=mode, maxpool=False, noop_max=0))
    env.reset(seed=0)
    calls, _ = _spy(env)
    b, up = env.buttons.index("B"), env.buttons.index("UP")
    up_fire = debug_cfg.env.action_map.index(["UP", "B"])
    for _ in range(2):  # two fire steps in a row: with tap both start with a new press
        _, _, _, _, info = env.step(up_fire)
    assert len(calls) == 2 * debug_cfg.env.frameskip
    pressed_b = [int(c[b]) for c in calls]
    if mode == "tap":
        assert pressed_b == ([1] + [0] * (debug_cfg.env.frameskip - 1)) * 2
    else:
        assert pressed_b == [1] * len(calls)
    assert all(c[up] == 1 for c in calls)  # movement is held in both modes
    assert np.array_equal(info["buttons"], env.button_table[up_fire]) and info["lives"] >= 0
    env.close()


def test_maxpool_noop_starts_and_lives(debug_cfg):
    cfg = dataclasses.replace(debug_cfg.env, maxpool=True, noop_max=5, height=224, width=320, crop=[0.0] * 4)
    env = RetroEnv(cfg)
    starts = set()
    for seed in range(6):
        before = env.emu_frames
        _, info = env.reset(seed=seed)
        skipped = env.emu_frames - before
        assert skipped % cfg.frameskip == 0 and skipped <= 5 * cfg.frameskip
        starts.add(skipped)
        assert info["lives"] == 3
    assert len(starts) > 1  # varied starts
    calls, frames = _spy(env)
    obs, _, _, _, _ = env.step(0)
    assert np.array_equal(obs, np.maximum(frames[-1], frames[-2]))  # native size: no resize in between
    env.close()
    with pytest.raises(ValueError, match="fire_mode"):
        RetroEnv(dataclasses.replace(debug_cfg.env, fire_mode="auto"))


def test_fire_schedule_policies(debug_cfg):
    import torch

    amap = debug_cfg.env.action_map
    fires = {a for a, combo in enumerate(amap) if "B" in combo}
    pol = make_policy("fire_every_2", len(amap), action_map=amap)
    pol.reset(np.random.default_rng(0))
    acts = [pol.act(None) for _ in range(8)]
    assert [a in fires for a in acts] == [True, False] * 4
    never = make_policy("never_fire", len(amap), action_map=amap)
    never.reset(np.random.default_rng(0))
    assert not any(never.act(None) in fires for _ in range(50))
    batch = pol.actions(0, 16, torch.Generator().manual_seed(0))
    assert all(int(a) in fires for a in batch) and not any(int(a) in fires for a in pol.actions(1, 16, torch.Generator()))


def test_random_fire_rate_varies_the_rate_per_episode(debug_cfg):
    amap = debug_cfg.env.action_map
    fires = {a for a, combo in enumerate(amap) if "B" in combo}
    pol = make_policy("random_fire_rate", len(amap), action_map=amap)
    rates = []
    for seed in range(6):
        pol.reset(np.random.default_rng(seed))
        acts = [pol.act(None) for _ in range(400)]
        rates.append(np.mean([a in fires for a in acts]))
        assert abs(rates[-1] - pol.rate) < 0.1  # fires at its episode's rate
    assert max(rates) - min(rates) > 0.3


def test_boxmax_resize_keeps_small_objects_brighter(debug_cfg):
    """A one-pixel bullet at native 224x320: the box filter leaves ~1/17 of it in a 64x64 frame,
    boxmax (box to 128x128, then 2x2 max) about 4x that; flat areas are unchanged."""
    frame = np.full((224, 320, 3), 40, dtype=np.uint8)
    frame[101, 161] = 255
    out = {}
    for mode in ("box", "boxmax"):
        env = RetroEnv.__new__(RetroEnv)
        env.cfg = dataclasses.replace(debug_cfg.env, height=64, width=64, resize=mode)
        out[mode] = env._resize(frame)
        assert out[mode].shape == (64, 64, 3)
        assert out[mode][0, 0, 0] == 40
    lift = lambda o: int(o.max()) - 40  # noqa: E731
    assert lift(out["box"]) < 20 and lift(out["boxmax"]) > 2.5 * lift(out["box"])
    with pytest.raises(ValueError, match="env.resize"):
        RetroEnv(dataclasses.replace(debug_cfg.env, resize="nearest"))


def test_crop_cuts_shares_of_the_native_frame_and_rejects_bad_shares():
    from wm.errors import ConfigValueError
    from wm.config import check_crop
    from wm.envs.retro import crop_frame

    frame = np.arange(224 * 320 * 3, dtype=np.int64).reshape(224, 320, 3)
    out = crop_frame(frame, [0.11, 0.0, 0.05, 0.05])  # 24.64 -> 25 rows; 16 columns each side
    assert out.shape == (199, 288, 3) and (out == frame[25:, 16:304]).all()
    assert crop_frame(frame, [0.0, 0.0, 0.0, 0.0]) is frame
    check_crop([0.11, 0.0, 0.0, 0.0])
    for bad in ([0.5, 0.5, 0.0, 0.0], [-0.1, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0]):
        with pytest.raises(ConfigValueError, match="env.crop"):
            check_crop(bad)


def test_aim_policy_bands_follow_the_crop():
    """Uncropped, the aim policy reads rows 36-57 (ship) and 6-49 (enemies) of a 64-row frame;
    with the top 11 % cut the same native rows land at 33-56 and 0-47."""
    from wm.envs.policies import AimPolicy

    amap = [[], ["LEFT"], ["RIGHT"], ["B"], ["LEFT", "B"], ["RIGHT", "B"]]
    assert AimPolicy(amap, 2, ("B",)).bands(64) == (slice(36, 58), slice(6, 50))
    assert AimPolicy(amap, 2, ("B",), [0.11, 0.0, 0.0, 0.0]).bands(64) == (slice(33, 57), slice(0, 48))
    # a ship (white) at native row ~150 and an enemy (red) right of it: the cropped policy steers right
    obs = np.zeros((64, 64, 3), np.uint8)
    obs[45, 20] = 255
    obs[10, 40] = (200, 0, 0)
    assert AimPolicy(amap, 2, ("B",), [0.11, 0.0, 0.0, 0.0]).target_direction(obs) == 1
