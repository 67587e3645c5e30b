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
