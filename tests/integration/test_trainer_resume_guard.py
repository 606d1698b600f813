"""`--resume` continues the checkpoint's model or refuses: a changed --preset, --tokenizer or
--image-size is one line naming the differences, and config.json still describes the weights
(docs/operations.md, "Mistakes and what streamcap says")."""

from __future__ import annotations

import json

import pytest

from streamcap.common.settings import ConfigError
from streamcap.text.tokenizer import WordPieceTokenizer
from tests.integration.test_trainer_runs import make_shards, settings, vocab


def test_a_resume_that_would_change_the_model_is_refused_by_name(redis_url, keys, r, tmp_path):
    from streamcap.trainer.train import run

    make_shards(r, keys, tmp_path / "shards", [8, 8])
    vocab(tmp_path / "vocab.txt")
    assert run(settings(redis_url, keys, tmp_path, run="r1", max_steps=2, checkpoint_every=2)) == 0
    config = (tmp_path / "ck" / "r1" / "config.json").read_text()

    resume = dict(run="r1", max_steps=4, checkpoint_every=2, resume=True)
    with pytest.raises(ConfigError, match=r"--resume: run 'r1' is a --preset tiny model .*d_model") as preset:
        run(settings(redis_url, keys, tmp_path, preset="small", **resume))
    assert "\n" not in str(preset.value)
    with pytest.raises(ConfigError, match=r"image_size 32 -> 64"):
        run(settings(redis_url, keys, tmp_path, image_size=64, **resume))
    other = WordPieceTokenizer.from_file(tmp_path / "vocab.txt")
    WordPieceTokenizer([*other.vocab, "zebra"]).save(tmp_path / "other.txt")
    with pytest.raises(ConfigError, match=r"vocabulary \(\d+ tokens in the checkpoint, \d+ in --tokenizer\)"):
        run(settings(redis_url, keys, tmp_path, tokenizer=tmp_path / "other.txt", **resume))
    assert (tmp_path / "ck" / "r1" / "config.json").read_text() == config  # never rewritten with another model

    assert run(settings(redis_url, keys, tmp_path, **resume)) == 0  # the run's own settings resume
    assert json.loads((tmp_path / "ck" / "r1" / "latest.json").read_text())["step"] == 4
