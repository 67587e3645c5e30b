"""A real `prefect server start` on loopback: prefect.yaml's deployments apply with their cron
schedules, and a triggered run of the pipeline deployment completes on a process worker."""

import pytest
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import BIN, copy_repo, env_with_venv, free_port


def _api(url: str, path: str, body: dict | None = None, method: str | None = None, tries: int = 6):
    """One REST call. A busy server answers 503 (its SQLite database locked by the scheduler
    service, seen on a loaded 2-core machine) or 429/502; like Prefect's own client, retry those
    with a growing wait before failing."""
    data = json.dumps(body).encode() if body is not None else None
    method = method or ("POST" if data is not None else "GET")
    for attempt in range(tries):
        req = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code not in (429, 502, 503) or attempt == tries - 1:
                raise
            time.sleep(2 ** attempt)


def _run(cmd, cwd, env, timeout=180):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_server_schedule_and_triggered_run(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    env = env_with_venv()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, WM_REPO=str(repo),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_API_HOST="127.0.0.1",
               PREFECT_SERVER_API_PORT=str(port), PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if _api(api, "/health") is True:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "prefect server did not come up in 120 s"
            time.sleep(1)
        prefect = str(BIN / "prefect")
        _run([prefect, "work-pool", "create", "wm-process", "--type", "process"], repo, env)
        _run([prefect, "--no-prompt", "deploy", "--all"], repo, env)
        deployments = {d["name"]: d for d in _api(api, "/deployments/filter", {})}
        assert set(deployments) >= {"pipeline-nightly", "retrain-weekly"}
        crons = {name: [s["schedule"]["cron"] for s in d["schedules"] if s.get("active", True)]
                 for name, d in deployments.items()}
        assert crons["pipeline-nightly"] == ["0 3 * * *"] and crons["retrain-weekly"] == ["0 4 * * 0"]
        # the scheduler service turns the schedule into upcoming runs
        pid = deployments["pipeline-nightly"]["id"]
        deadline = time.time() + 60
        while True:
            runs = _api(api, "/flow_runs/filter", {"deployments": {"id": {"any_": [pid]}},
                                                   "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
            if runs:
                break
            assert time.time() < deadline, "no scheduled runs appeared for the cron schedule"
            time.sleep(2)
        assert all(r["expected_start_time"][11:16] == "03:00" for r in runs)
        # the worker below runs whatever is due: switch the schedules off and drop their runs, so a
        # test that straddles 03:00 UTC (or Sunday 04:00) runs only the triggered debug flow
        for d in deployments.values():
            for sched in d["schedules"]:
                _api(api, f"/deployments/{d['id']}/schedules/{sched['id']}", {"active": False}, method="PATCH")
        scheduled = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
        for r in _api(api, "/flow_runs/filter", scheduled):
            _api(api, f"/flow_runs/{r['id']}", method="DELETE")
        assert _api(api, "/flow_runs/filter", scheduled) == []

        out = _run([prefect, "deployment", "run", "wm-pipeline/pipeline-nightly", "--params",
                    json.dumps({"preset": "debug", "stages": ["collect", "shard"]})], repo, env)
        run_id = next(w for w in out.split() if w.count("-") == 4)  # "UUID: <id>"
        _run([prefect, "worker", "start", "--pool", "wm-process", "--run-once"], repo, env, timeout=300)
        run = _api(api, f"/flow_runs/{run_id}")
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert (repo / "data/shards/manifest.json").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
