"""RunLogger without dvclive (a bare GPU image): the logged figures still land on disk."""

import json
import sys

import pytest

from wm.training.logging import RunLogger


def test_history_jsonl_without_dvclive(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dvclive", None)  # import fails as on an image without it
    with pytest.warns(UserWarning, match="history.jsonl"):
        log = RunLogger(tmp_path / "live", wandb_mode="disabled", project="t", config={}, total_steps=4)
    log.log(2, {"a/loss": 0.5, "flag": True, "name": "x"})
    log.log(4, {"a/val": 3})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "live" / "history.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "a/loss": 0.5}, {"step": 4, "a/val": 3}]
