"""Typed configs from YAML and --set: strict keys, typed values, one-line errors that say what to fix."""

from __future__ import annotations

import pytest

from thyme.config import ConfigError, apply_override, build, load_config, to_plain
from thyme.train.config import DataSource, SFTConfig

MINIMAL = "model: m\noutput_dir: out\ndata:\n  - path: d\n"


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_a_minimal_config_fills_the_reference_defaults(tmp_path):
    cfg = load_config(SFTConfig, write(tmp_path, MINIMAL))
    assert cfg.data == (DataSource("d"),)
    assert (cfg.learning_rate, cfg.max_length, cfg.freeze_vision, cfg.only_last_round) == (
        1e-5,
        10240,
        True,
        True,
    )
    assert cfg.masks.mask_sandbox and cfg.masks.only_last_round


def test_overrides_set_nested_keys_list_items_and_parse_yaml_scalars(tmp_path):
    cfg = load_config(
        SFTConfig,
        write(tmp_path, MINIMAL),
        [
            "learning_rate=2e-5",
            "lora.r=8",
            "data.0.variants=[gold, direct]",
            "aux.classes=3",
            "freeze_vision=false",
        ],
    )
    assert cfg.learning_rate == 2e-5 and cfg.lora.r == 8 and cfg.aux.classes == 3
    assert cfg.data[0].variants == ("gold", "direct")
    assert to_plain(cfg)["data"][0]["variants"] == ["gold", "direct"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learnig_rate=1"], "unknown config key 'learnig_rate'; did you mean 'learning_rate'"),
        (["lora.rank=4"], "unknown config key 'lora.rank'; valid keys: r, alpha, dropout"),
        (["batch_size=two"], "batch_size: expected a whole number, got 'two'"),
        (["batch_size=0"], "batch_size=0 must be >= 1"),
        (["freeze_vision=maybe"], "freeze_vision: expected true or false"),
        (["finetune=qlora"], "finetune: 'qlora' is not one of full, lora"),
        (["data.0.variants=[gold, tools]"], "'tools' is not one of gold, direct"),
        (["data.3.path=x"], "'3' is not an index of a list of 1"),
        (["learning_rate"], "write key=value"),
        (["aux.classes=4"], "aux trains the vision tower: set freeze_vision: false"),
    ],
)
def test_errors_are_one_line_and_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(SFTConfig, write(tmp_path, MINIMAL), overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_keys_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="'output_dir' is required"):
        load_config(SFTConfig, write(tmp_path, "model: m\ndata: [{path: d}]\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2\)"):
        load_config(SFTConfig, write(tmp_path, "model: m\n  bad: [\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SFTConfig, write(tmp_path, "- a\n- b\n"))


def test_a_single_item_where_a_list_is_expected_and_numbers_as_text():
    cfg = build(SFTConfig, {"model": 7, "output_dir": "o", "data": {"path": "d"}, "report_to": "none"})
    assert cfg.model == "7" and cfg.data == (DataSource("d"),) and cfg.report_to == ("none",)


def test_apply_override_creates_nested_mappings():
    data: dict = {}
    apply_override(data, "aux.classes=5")
    assert data == {"aux": {"classes": 5}}


def test_every_shipped_config_loads():
    """configs/: every SFT and GRPO config is valid; the DeepSpeed and accelerate files parse."""
    import json
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    sft = sorted((root / "sft").glob("*.yaml"))
    assert len(sft) >= 4
    for path in sft:
        cfg = load_config(SFTConfig, path)
        if cfg.deepspeed:
            assert (root.parent / cfg.deepspeed).is_file(), path
    from thyme.train.grpo_config import GRPOConfig

    grpo = sorted((root / "grpo").glob("*.yaml"))
    assert len(grpo) >= 2
    for path in grpo:
        cfg = load_config(GRPOConfig, path)
        if cfg.deepspeed:
            assert (root.parent / cfg.deepspeed).is_file(), path
    for path in (root / "deepspeed").glob("*.json"):
        assert json.loads(path.read_text())["zero_optimization"]["stage"] in (2, 3)
    for path in (root / "accelerate").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["num_processes"] == 8
