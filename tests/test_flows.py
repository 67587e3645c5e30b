"""Prefect front-end: the pipeline flow over DVC stages."""

import pytest


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of real stages: a slow or busy 2-core runner must not hit the 600 s default
def test_pipeline_flow_runs_debug_preset_and_skips_unchanged(tmp_path, prefect_harness):
    import subprocess

    from conftest import copy_repo, env_with_venv
    from flows.pipeline import markdown_report, pipeline

    repo = copy_repo(tmp_path / "repo")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env_with_venv())
    first = pipeline(repo=str(repo), preset="debug")
    names = [r["stage"] for r in first]
    assert names[:4] == ["collect", "shard", "import_videos", "train_tokenizer"]
    assert not any(r["skipped"] for r in first)
    assert first[0]["metrics"]["frames"] > 0
    second = pipeline(repo=str(repo))
    assert all(r["skipped"] for r in second), [r["stage"] for r in second if not r["skipped"]]
    report = markdown_report(first)
    assert "| collect | ran |" in report and "mean_return" in report


def test_a_dvc_lock_record_cut_short_by_a_kill_is_cleared(tmp_path):
    """Seen in session 18: the retrain test's SIGKILL landed while dvc wrote .dvc/tmp/rwlock, and
    every later `dvc repro` failed with "Unable to read RWLock-file" (collect's retries included)."""
    from flows.pipeline import DVC_RWLOCK, clear_corrupt_dvc_rwlock

    lock = tmp_path / DVC_RWLOCK
    assert clear_corrupt_dvc_rwlock(tmp_path) is False  # none there: nothing to do
    lock.parent.mkdir(parents=True)
    lock.write_text('{"read": {}, "write": {"dvc.yaml": {"pid": 1, "cmd": "dvc repro"}}}')
    assert clear_corrupt_dvc_rwlock(tmp_path) is False and lock.exists()  # a readable lock is another run's
    for cut in ("", '{"read": {}, "wri'):
        lock.write_text(cut)
        assert clear_corrupt_dvc_rwlock(tmp_path) is True and not lock.exists()
