"""Evaluation-set loaders on tiny generated sets: Karpathy json and jsonl, and their errors."""

from __future__ import annotations

import json

import pytest

from streamcap.eval.datasets import EvalSetError, load_eval_set, split_counts
from tests.support.evalsets import jsonl_set, karpathy_set, references
from tests.support.images import save_image


def test_karpathy_test_and_val_splits(tmp_path):
    path = karpathy_set(tmp_path, test=4, val=2, train=3)
    test = load_eval_set(path, split="test", image_dir=tmp_path / "images")
    assert [im.id for im in test.images] == ["1000.jpg", "1001.jpg", "1002.jpg", "1003.jpg"]
    assert test.images[0].references == tuple(references(0))
    assert test.images[0].path == tmp_path / "images" / "1000.jpg"
    assert test.name == "dataset_flickr30k.json:test"
    val = load_eval_set(path, split="val", image_dir=tmp_path / "images")
    assert [im.id for im in val.images] == ["1004.jpg", "1005.jpg"]
    assert split_counts(path) == {"test": 4, "val": 2, "train": 3}


def test_karpathy_limit_and_coco_filepath(tmp_path):
    path = karpathy_set(tmp_path, test=3, val=0, train=0, image_dir="val2014")
    doc = json.loads(path.read_text())
    for entry in doc["images"]:
        entry["filepath"] = "val2014"  # COCO's Karpathy file splits paths in two
    path.write_text(json.dumps(doc))
    evalset = load_eval_set(path, split="test", limit=2)  # image dir defaults to the json's folder
    assert [im.id for im in evalset.images] == ["val2014/1000.jpg", "val2014/1001.jpg"]
    assert evalset.images[1].path == tmp_path / "val2014" / "1001.jpg"


def test_missing_split_lists_the_splits_there_are(tmp_path):
    path = karpathy_set(tmp_path, test=2, val=1, train=0)
    with pytest.raises(EvalSetError) as e:
        load_eval_set(path, split="restval", image_dir=tmp_path / "images")
    assert str(e.value) == f"{path}: no images in split 'restval' (images per split: test: 2, val: 1)"


def test_missing_image_names_the_entry(tmp_path):
    path = karpathy_set(tmp_path, test=3, val=0, train=0)
    (tmp_path / "images" / "1001.jpg").unlink()
    with pytest.raises(EvalSetError) as e:
        load_eval_set(path, split="test", image_dir=tmp_path / "images")
    message = str(e.value)
    assert "1 image(s) not found: 1001.jpg -> " in message and str(tmp_path / "images" / "1001.jpg") in message
    assert "--images" in message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda doc: doc["images"][1].pop("sentences"), "images[1]: missing 'sentences'"),
        (
            lambda doc: doc["images"][2].update(sentences=[]),
            "images[2] (1002.jpg): 'sentences' must be a non-empty list",
        ),
        (
            lambda doc: doc["images"][0]["sentences"][1].pop("raw"),
            "images[0] (1000.jpg): sentences[1] has no 'raw' caption",
        ),
        (lambda doc: doc["images"].__setitem__(1, "x.jpg"), "images[1]: expected an object, got str"),
        (lambda doc: doc.pop("images"), 'not a Karpathy split file (expected {"images": [...]} at the top)'),
    ],
)
def test_malformed_karpathy_entries_are_named(tmp_path, mutate, expected):
    path = karpathy_set(tmp_path, test=3, val=0, train=0)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(EvalSetError) as e:
        load_eval_set(path, split="test", image_dir=tmp_path / "images")
    assert str(e.value) == f"{path}: {expected}"


def test_not_json_says_where(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [\n{"filename": "a.jpg",,}]}')
    with pytest.raises(EvalSetError, match=r"dataset.json: not valid JSON \(.* at line 2, column"):
        load_eval_set(path)


def test_missing_file(tmp_path):
    with pytest.raises(EvalSetError, match="no such file"):
        load_eval_set(tmp_path / "nope.json")


def test_jsonl_set(tmp_path):
    path = jsonl_set(tmp_path, n=3)
    evalset = load_eval_set(path)
    assert evalset.split is None and evalset.name == "set.jsonl"
    assert [im.id for im in evalset.images] == ["pics/p0.png", "pics/p1.png", "pics/p2.png"]
    assert evalset.references["pics/p2.png"] == references(2)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", ":2: not valid JSON"),
        ('{"image": "pics/x.png"}', ":2 (pics/x.png): 'references' must be a non-empty list of strings"),
        ('{"references": ["a dog"]}', ":2: missing 'image' (a path)"),
        ('["pics/x.png", ["a dog"]]', ":2: expected an object, got list"),
    ],
)
def test_malformed_jsonl_lines_are_named(tmp_path, line, expected):
    save_image(tmp_path / "pics" / "x.png", 1)
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"image": "pics/x.png", "references": ["a"]}) + "\n" + line + "\n")
    with pytest.raises(EvalSetError) as e:
        load_eval_set(path)
    assert str(e.value).startswith(f"{path}{expected}")


def test_duplicate_ids_are_an_error(tmp_path):
    save_image(tmp_path / "x.png", 1)
    path = tmp_path / "set.jsonl"
    row = json.dumps({"image": "x.png", "references": ["a"]})
    path.write_text(f"{row}\n{row}\n")
    with pytest.raises(EvalSetError, match="used more than once: x.png"):
        load_eval_set(path)
