import numpy as np
import pytest
import torch

from wm.data.episodes import continuation
from wm.probes import average_precision, probe_scores, roc_auc


def test_roc_auc_and_average_precision_by_hand():
    labels = np.array([1, 0, 1, 0, 0], bool)
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.3, 0.2]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.9, 0.2, 0.8, 0.7]), labels) == 0.0
    # pairs (pos, neg): 0.5 > {0.4, 0.1} and 0.3 > 0.1, ties with 0.5 count half: (2 + 1 + 0.5 + 0) / 6
    assert roc_auc(np.array([0.5, 0.4, 0.3, 0.5, 0.1]), labels) == pytest.approx((2 + 0.5 + 1) / 6)
    assert roc_auc(np.zeros(5), labels) == 0.5  # a constant ranks nothing
    assert np.isnan(roc_auc(np.zeros(3), np.zeros(3, bool)))
    # AP: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), np.array([1, 0, 1, 0, 0], bool)) == pytest.approx(5 / 6)


def test_probe_finds_a_learnable_event_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 20, generator=gen)
    y = (x[:, 3] + 0.5 * x[:, 7] > 1.2)
    scores = probe_scores(x[:2000], y[:2000], x[2000:], steps=300)
    assert roc_auc(scores, y[2000:].numpy()) > 0.95
    noise = torch.rand(3000, generator=gen) < 0.1
    scores = probe_scores(x[:2000], noise[:2000], x[2000:], steps=300)
    assert abs(roc_auc(scores, noise[2000:].numpy()) - 0.5) < 0.1


def test_continuation_targets_from_lives():
    lives = np.array([3, 3, 2, 2, 2, 1, 1, 0], np.int16)
    terminals = np.array([0, 0, 0, 0, 0, 0, 0, 1], bool)
    assert continuation(lives, terminals).tolist() == [1, 1, 0, 1, 1, 0, 1, 0]
    # unknown lives (-1): only the terminal ends it
    assert continuation(np.full(4, -1), np.array([0, 0, 0, 1], bool)).tolist() == [1, 1, 1, 0]


def test_kill_probe_cv_folds_keep_episodes_whole_and_the_paired_interval_finds_a_better_scorer():
    """scripts/kill_probe_cv.py: each episode's rows fall in one fold, every fold is used, and the
    episode bootstrap's interval for (worse - better) lies below zero for a clearly worse scorer; two
    arms of seeds are compared by their mean AUCs, over episodes and by Welch's interval over seeds."""
    from conftest import load_script

    cv = load_script("kill_probe_cv")
    rng = np.random.default_rng(0)
    episodes = np.repeat([f"train/ep{i:03d}" for i in range(30)], 50)
    fold = cv.fold_of(episodes, 10)
    assert set(fold) == set(range(10))
    for e in set(episodes):
        assert len(set(fold[episodes == e])) == 1
    y = rng.random(len(episodes)) < 0.1
    good = y + rng.normal(0, 0.5, len(y))
    bad = y + rng.normal(0, 2.0, len(y))
    boot = cv.resampled_aucs({"good": good, "bad": bad}, y, episodes, boots=200)
    assert all(0.5 < a <= 1 for a in boot["good"])
    assert np.percentile(boot["bad"] - boot["good"], 97.5) < 0

    # two arms of two "seeds" each: the difference of the arms' mean AUCs, over episodes and over seeds
    groups = {"worse": ["bad", "bad2"], "better": ["good", "good2"]}
    boot["good2"], boot["bad2"] = boot["good"] - 0.01, boot["bad"] + 0.01
    aucs = {"good": 0.90, "good2": 0.88, "bad": 0.70, "bad2": 0.74}
    g = cv.group_difference(groups, aucs, boot)
    assert g["diff_better_minus_worse"] == pytest.approx(0.89 - 0.72)
    assert g["better_sd"] == pytest.approx(np.std([0.90, 0.88], ddof=1))
    low, high = g["diff_episodes_bootstrap95"]
    assert 0 < low < high
    low, high = g["diff_seeds_welch95"]
    # Welch's interval by hand: standard error, Welch-Satterthwaite degrees of freedom, t quantile
    from scipy import stats
    se = np.sqrt(np.var([0.90, 0.88], ddof=1) / 2 + np.var([0.70, 0.74], ddof=1) / 2)
    df = se**4 / ((np.var([0.90, 0.88], ddof=1) / 2) ** 2 + (np.var([0.70, 0.74], ddof=1) / 2) ** 2)
    half = stats.t.ppf(0.975, df) * se
    assert (low, high) == pytest.approx((0.17 - half, 0.17 + half))
    # seed pairs in the order given: (0.90 - 0.70, 0.88 - 0.74), both for the better arm
    assert g["diff_by_seed_pair"] == pytest.approx([0.20, 0.14]) and g["seed_pairs_favouring_better"] == 2
    half = stats.t.ppf(0.975, 1) * np.std([0.20, 0.14], ddof=1) / np.sqrt(2)
    assert g["diff_seed_pairs_t95"] == pytest.approx([0.17 - half, 0.17 + half])
    with pytest.raises(SystemExit, match="exactly two groups"):
        cv.group_difference({"a": ["good"]}, aucs, boot)


def test_kill_probe_cv_cache_reuses_a_folders_scores_until_its_latents_change(tmp_path):
    """scripts/kill_probe_cv.py --cache: the second run over the same latents and setup loads the
    scores instead of fitting the probes again; recached latents (a changed file) are fitted anew."""
    from conftest import load_script

    cv = load_script("kill_probe_cv")
    folder = tmp_path / "latents"
    folder.mkdir()
    (folder / "train-000000.tar").write_bytes(b"a")
    calls = []

    def compute():
        calls.append(1)
        return [np.arange(3.0) + len(calls), np.ones(3)]

    first = cv.cached_scores(tmp_path / "cache", str(folder), (10, 600, 2, ["k"]), compute)
    again = cv.cached_scores(tmp_path / "cache", str(folder), (10, 600, 2, ["k"]), compute)
    assert len(calls) == 1 and all(np.array_equal(a, b) for a, b in zip(first, again))
    other_setup = cv.cached_scores(tmp_path / "cache", str(folder), (5, 600, 2, ["k"]), compute)
    assert len(calls) == 2 and other_setup[0][0] == 2
    (folder / "train-000000.tar").write_bytes(b"bb")
    cv.cached_scores(tmp_path / "cache", str(folder), (10, 600, 2, ["k"]), compute)
    assert len(calls) == 3
    assert cv.cached_scores(None, str(folder), (), compute)[0][0] == 4  # no cache: always fitted
