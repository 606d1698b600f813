"""The demo world: deterministic scenes whose captions say what the pixels show."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from streamcap.demo.data import write_eval_set, write_source_parquet
from streamcap.demo.world import COLOURS, Scene


def test_scene_is_determined_by_seed_and_index():
    assert Scene.for_index(3, 10) == Scene.for_index(3, 10)
    assert Scene.for_index(3, 10) != Scene.for_index(4, 10)
    assert Scene.for_index(3, 10).render(64).tobytes() == Scene.for_index(3, 10).render(64).tobytes()


def test_references_are_five_paraphrases_naming_both_shapes():
    scene = Scene(
        colour_a="red",
        shape_a="circle",
        colour_b="blue",
        shape_b="square",
        relation="above",
        texture="stripes",
        background=(200, 190, 170),
        jitter=5,
    )
    refs = scene.references()
    assert len(refs) == 5 and refs[0] == "a red circle above a blue square"
    assert refs[1] == "a blue square below a red circle"
    assert all("red circle" in r and "blue square" in r for r in refs)
    assert scene.llava_caption().startswith("A red circle above a blue square. ")


def test_shapes_are_drawn_where_the_relation_says():
    scene = Scene(
        colour_a="red",
        shape_a="square",
        colour_b="blue",
        shape_b="square",
        relation="left",
        texture="plain",
        background=(120, 120, 120),
        jitter=1,
    )
    image = scene.render(200)
    red = [(x, y) for x in range(0, 200, 4) for y in range(0, 200, 4) if image.getpixel((x, y)) == COLOURS["red"]]
    blue = [(x, y) for x in range(0, 200, 4) for y in range(0, 200, 4) if image.getpixel((x, y)) == COLOURS["blue"]]
    assert red and blue
    assert max(x for x, _ in red) < min(x for x, _ in blue)


def test_parquet_has_relaion_columns(tmp_path):
    path = write_source_parquet(tmp_path / "src.parquet", "http://127.0.0.1:9", rows=30, seed=1)
    table = pq.read_table(path)
    assert table.column_names == ["key", "url", "width", "height", "llava_caption", "cogvlm_caption", "alt_txt"]
    assert table.num_rows == 30 and table.column("url")[2].as_py() == "http://127.0.0.1:9/img/2.jpg"


def test_eval_set_is_karpathy_format(tmp_path):
    path = write_eval_set(tmp_path, images=4, seed=2)
    data = json.loads(path.read_text())
    assert [im["split"] for im in data["images"]] == ["test"] * 4
    assert all(len(im["sentences"]) == 5 and (tmp_path / "images" / im["filename"]).exists() for im in data["images"])
