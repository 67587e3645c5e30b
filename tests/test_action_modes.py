"""`wm action-modes` helpers: new fire presses per mode and the press -> reward lag lift, by hand."""

import numpy as np
import pytest

from wm.stages.action_modes import fire_presses, reward_lag_lift


def test_fire_presses_count_new_presses():
    tap = np.array([True, False])  # button 0 is the tap button
    buttons = np.array([[1, 0], [1, 1], [0, 1], [1, 0], [1, 0]], np.uint8)
    # hold: a press counts only when the button was up the step before
    assert fire_presses(buttons, tap, "hold").tolist() == [True, False, False, True, False]
    # tap: the env presses anew on every fire step
    assert fire_presses(buttons, tap, "tap").tolist() == [True, True, False, True, True]


def test_reward_lag_lift_by_hand():
    ep = {"presses": np.array([1, 0, 1, 0, 0, 0], bool), "rewards": np.array([0, 0, 20, 0, 20, 0], np.float32)}
    lift = reward_lag_lift([ep], max_lag=3)
    # lag 0: P(r | press) = 1/2, P(r | no press) = 1/4
    assert lift[0] == pytest.approx(0.5 - 0.25)
    # lag 2: presses at 0, 2 -> rewards at 2, 4 both > 0; no-press steps 1, 3 -> rewards at 3, 5: none
    assert lift[2] == pytest.approx(1.0 - 0.0)


def test_aim_policy_steers_under_the_nearest_enemy_and_fires_on_schedule():
    from wm.envs.policies import AimPolicy, make_policy

    action_map = [[], ["UP"], ["DOWN"], ["LEFT"], ["RIGHT"], ["B"], ["UP", "B"], ["DOWN", "B"], ["LEFT", "B"],
                  ["RIGHT", "B"]]
    aim = make_policy("aim_fire_every_2", len(action_map), action_map=action_map)
    assert isinstance(aim, AimPolicy) and aim.name == "aim_fire_every_2"
    aim.reset(np.random.default_rng(0))
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[50:53, 40:43] = 255                     # the ship (white), x ~ 41
    frame[10:13, 5:8] = (220, 20, 20)             # a far enemy on the left
    frame[30:33, 55:58] = (220, 20, 20)           # the nearest (lowest) enemy, on the right
    assert aim.target_direction(frame) == 1
    assert [action_map[aim.act(frame)] for _ in range(2)] == [["RIGHT", "B"], ["RIGHT"]]  # fire on steps 0, 2, ...
    frame[30:33, 55:58] = 0
    frame[30:33, 40:43] = (220, 20, 20)           # now straight above: stay
    assert aim.target_direction(frame) == 0 and action_map[aim.act(frame)] == ["B"]
    assert aim.target_direction(np.zeros((64, 64, 3), np.uint8)) is None and aim.seen == 3


def test_aim_mix_aims_at_its_episode_skill():
    """Each episode draws a skill s; a step aims with probability s, else moves at random (1 of 5
    moves is RIGHT by chance), so the share of RIGHT steps is s + (1 - s) / 5."""
    from wm.envs.policies import AimMix, make_policy

    action_map = [[], ["UP"], ["DOWN"], ["LEFT"], ["RIGHT"], ["B"], ["UP", "B"], ["DOWN", "B"], ["LEFT", "B"],
                  ["RIGHT", "B"]]
    mix = make_policy("aim_mix", len(action_map), action_map=action_map)
    assert isinstance(mix, AimMix)
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[50:53, 10:13] = 255                     # the ship on the left
    frame[30:33, 55:58] = (220, 20, 20)           # an enemy on the right: aiming means RIGHT
    skills = []
    for seed in range(6):
        mix.reset(np.random.default_rng(seed))
        right = np.mean(["RIGHT" in action_map[mix.act(frame)] for _ in range(600)])
        assert right == pytest.approx(mix.skill + (1 - mix.skill) / 5, abs=0.07)
        skills.append(mix.skill)
    assert max(skills) - min(skills) > 0.3
