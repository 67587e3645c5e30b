import subprocess
import sys

import pytest
import yaml

from wm import config as config_mod
from conftest import ROOT


@pytest.mark.parametrize("preset", config_mod.PRESETS)
def test_every_preset_composes_and_validates(preset):
    raw = config_mod.compose(preset)
    cfg = config_mod.from_dict(config_mod.Config, raw)
    assert cfg.preset_name == preset
    assert config_mod.to_dict(cfg) == raw  # lossless both ways


def test_committed_params_is_the_default_composition():
    on_disk = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert on_disk == config_mod.compose("default"), "params.yaml is stale: run `wm compose --preset default`"


def test_debug_preset_overrides_default():
    debug = config_mod.from_dict(config_mod.Config, config_mod.compose("debug"))
    default = config_mod.from_dict(config_mod.Config, config_mod.compose("default"))
    assert debug.collect.frames < default.collect.frames
    assert debug.env.game == default.env.game


def test_unknown_key_names_valid_keys_and_close_match():
    raw = config_mod.compose("debug")
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.apply_overrides(raw, ["collect.frams=10"])
    msg = str(err.value)
    assert "collect.frams" in msg and "Did you mean 'frames'" in msg and "workers" in msg


def test_unknown_key_in_params_file():
    raw = config_mod.compose("debug")
    raw["collect"]["bogus"] = 1
    with pytest.raises(config_mod.ConfigError, match="unknown config key 'collect.bogus'.*Valid keys"):
        config_mod.from_dict(config_mod.Config, raw)


def test_missing_key_and_wrong_type():
    raw = config_mod.compose("debug")
    del raw["shard"]["chunk_len"]
    with pytest.raises(config_mod.ConfigError, match="missing config key.*shard.chunk_len"):
        config_mod.from_dict(config_mod.Config, raw)
    raw = config_mod.compose("debug")
    with pytest.raises(config_mod.ConfigError, match="collect.frames: expected an integer"):
        config_mod.from_dict(config_mod.Config, config_mod.apply_overrides(raw, ["collect.frames=lots"]))


def test_hydra_override_errors_are_config_errors():
    with pytest.raises(config_mod.ConfigError):
        config_mod.compose("debug", ["collect.nope=1"])
    with pytest.raises(config_mod.ConfigError, match="Valid presets"):
        config_mod.compose("debgu")
    raw = config_mod.compose("debug", ["collect.frames=123"])
    assert raw["collect"]["frames"] == 123
    raw = config_mod.apply_overrides(raw, ["tokenizer.train.lr=3e-3", "env.state=Level1"])
    assert raw["tokenizer"]["train"]["lr"] == 0.003 and raw["env"]["state"] == "Level1"


def test_cli_bad_override_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wm.cli", "collect", "--preset", "debug", "collect.wrkers=3"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Did you mean 'workers'" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing written


def test_cli_prints_user_errors_and_keeps_tracebacks_of_bugs(monkeypatch, capsys):
    """A UserError is one line and exit 2; any other exception (a bug) propagates with its traceback."""
    from wm import cli
    from wm.errors import ConfigValueError

    def failing(exc):
        def run(cfg):
            raise exc
        return run

    import wm.stages.shard as shard

    monkeypatch.setattr(shard, "run", failing(ConfigValueError("shard.val_fraction must be in [0, 1), got 2")))
    assert cli.main(["shard", "--preset", "debug"]) == 2
    assert capsys.readouterr().err.strip() == "wm shard: error: shard.val_fraction must be in [0, 1), got 2"
    monkeypatch.setattr(shard, "run", failing(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["shard", "--preset", "debug"])


def test_paper_preset_has_the_papers_model_sizes():
    """400M tokenizer, 1.6B dynamics (Hafner et al. 2025), counted without allocating."""
    import torch

    from wm.models.dynamics import Dynamics
    from wm.models.tokenizer import Tokenizer

    cfg = config_mod.from_dict(config_mod.Config, config_mod.compose("paper"))
    with torch.device("meta"):
        tok = Tokenizer(cfg.tokenizer, cfg.env.height, cfg.env.width)
        dyn = Dynamics(cfg.dynamics, len(cfg.env.action_map), cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim)
    assert 360e6 < sum(p.numel() for p in tok.parameters()) < 440e6
    assert 1.45e9 < sum(p.numel() for p in dyn.parameters()) < 1.75e9
    assert cfg.dynamics.context == 192 and cfg.tokenizer.n_latents == 256


def test_absolute_paths_cover_every_section(debug_cfg, tmp_path):
    cfg = config_mod.with_absolute_paths(debug_cfg, tmp_path)
    assert cfg.shard.out_dir == str(tmp_path / debug_cfg.shard.out_dir)
    assert cfg.tokenizer.out_dir == str(tmp_path / debug_cfg.tokenizer.out_dir)
    assert cfg.latents.in_dir == str(tmp_path / debug_cfg.latents.in_dir)
    assert cfg.tokenizer.train.init_from == ""  # empty stays empty
    assert cfg.tokenizer.patch == debug_cfg.tokenizer.patch  # nothing else moves
    assert config_mod.with_absolute_paths(cfg, "/elsewhere") == cfg  # absolute paths stay


def test_workdir_keeps_a_run_by_hand_away_from_the_committed_metrics(debug_data, tmp_path, monkeypatch):
    """`wm shard --workdir W`: the shards go where the config says (relative to where the command
    runs), the stage's metrics to W/data/metrics, and ./data/metrics is not touched."""
    from wm import cli

    monkeypatch.chdir(tmp_path)
    rollouts = debug_data["cfg"].shard.in_dir
    assert cli.main(["shard", "--preset", "debug", "--workdir", "trial", f"shard.in_dir={rollouts}",
                     "shard.out_dir=mine/shards", "shard.extra_dir="]) == 0
    assert (tmp_path / "mine/shards/manifest.json").exists()
    assert (tmp_path / "trial/data/metrics/shard.json").exists()
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "trial/mine").exists()
