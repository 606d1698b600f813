"""Trainer settings: wrong values are one line naming the setting; the CLI builds them lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamcap.common.settings import ConfigError
from streamcap.trainer.config import TrainerSettings
from tests.support import timing

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"batch_size": 0}, "--batch-size / STREAMCAP_TRAIN_BATCH_SIZE"),
        ({"preset": "huge"}, "--preset / STREAMCAP_PRESET"),
        ({"run": "has space"}, "--run-id / STREAMCAP_RUN_ID"),
        ({"fresh_wait_ms": 5000}, "--fresh-wait-ms / STREAMCAP_FRESH_WAIT_MS"),
        ({"aug_max": 1.5}, "--aug-max / STREAMCAP_AUG_MAX"),
        ({"resume": True}, "--run-id / STREAMCAP_RUN_ID"),
        ({"tokenizer": Path("/nonexistent/vocab.txt")}, "--tokenizer / STREAMCAP_TOKENIZER"),
        ({"caption_sentences": -1}, "--caption-sentences / STREAMCAP_TRAIN_CAPTION_SENTENCES"),
    ],
)
def test_wrong_value_is_one_line_naming_the_setting(kwargs, names):
    with pytest.raises(ConfigError) as e:
        TrainerSettings(**kwargs)
    assert str(e.value).startswith(names + ": expected ") and "\n" not in str(e.value)


def test_defaults_follow_the_original_and_run_dir_is_per_run(tmp_path):
    cfg = TrainerSettings(checkpoint_dir=tmp_path, run="r1")
    assert cfg.lr == 1e-4 and cfg.min_eos_position == 15 and cfg.preset == "base"
    assert cfg.run_dir == tmp_path / "r1"
    with pytest.raises(ConfigError, match="--tokenizer"):
        cfg.require_tokenizer()


def test_train_command_reports_bad_settings_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "streamcap.trainer", "--batch-size", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timing.scaled(60),
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == "streamcap: error: --batch-size / STREAMCAP_TRAIN_BATCH_SIZE: expected a number from 1 to 4096, got 0"
    )
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    out = subprocess.run(
        [sys.executable, "-m", "streamcap.trainer", "--tokenizer", str(tmp_path / "vocab.txt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timing.scaled(60),
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1 and "REDIS_URL is not set" in out.stderr and "Traceback" not in out.stderr


def test_every_model_preset_is_a_trainer_preset():
    # `small` was in the model table and the README but `train` rejected it.
    from streamcap.model.config import PRESETS as MODEL_PRESETS

    for name in MODEL_PRESETS:
        assert TrainerSettings(preset=name).preset == name


def test_the_loader_gets_the_settings_as_they_are_and_its_workers_get_them_pickled(tmp_path):
    import pickle

    from streamcap.trainer.augment import LevelSchedule
    from streamcap.trainer.dataset import ShardStreamDataset
    from tests.support.loader import MODEL

    cfg = TrainerSettings(shard_dir=tmp_path, run="r", loader_workers=2, shuffle_buffer=7, replay="uniform")
    dataset = ShardStreamDataset(cfg, MODEL, None, LevelSchedule(), redis_url="redis://h:1/0", rank=1, world_size=2)
    assert dataset.cfg is cfg  # no copy of its fields to drift from the settings
    again = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives under spawn
    assert (again.cfg, again.model, again.redis_url, again.rank) == (cfg, MODEL, "redis://h:1/0", 1)
