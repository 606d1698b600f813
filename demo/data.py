"""Files of the demo world: a RELAION-POP-style url+caption parquet and a Flickr30K-format eval set.

    write_source_parquet(path, base_url="http://127.0.0.1:8000", rows=3000, seed=1)
    write_eval_set(directory, images=100, seed=2)   # dataset_flickr30k.json + images/

Training rows and held-out images come from different seeds, so no test scene's pixels are seen
in training (its caption may still occur: the world is small on purpose).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from streamcap.common.files import atomic_write_text, atomic_writer
from streamcap.demo.world import Scene

# The size the server renders at; RELAION-POP images are >= 768 px, the demo stays small.
SOURCE_IMAGE_SIZE = 256


def image_path(index: int) -> str:
    return f"/img/{index}.jpg"


def write_source_parquet(path: Path, base_url: str, rows: int, seed: int) -> Path:
    """url+caption rows in RELAION-POP's column layout, atomically written."""
    scenes = [Scene.for_index(seed, i) for i in range(rows)]
    table = pa.table(
        {
            "key": [f"{i:09d}" for i in range(rows)],
            "url": [base_url.rstrip("/") + image_path(i) for i in range(rows)],
            "width": [SOURCE_IMAGE_SIZE] * rows,
            "height": [SOURCE_IMAGE_SIZE] * rows,
            "llava_caption": [s.llava_caption() for s in scenes],
            "cogvlm_caption": [s.references()[2] + "." for s in scenes],
            "alt_txt": [s.alt_text() for s in scenes],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        pq.write_table(table, f, row_group_size=500)
    return path


def write_eval_set(directory: Path, images: int, seed: int) -> Path:
    """A Karpathy-split json (all images in split 'test') and its image directory."""
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(images):
        scene = Scene.for_index(seed, i)
        filename = f"test_{i:05d}.jpg"
        scene.render(SOURCE_IMAGE_SIZE).save(image_dir / filename, quality=92)
        entries.append(
            {
                "filename": filename,
                "imgid": i,
                "split": "test",
                "sentences": [{"raw": ref, "tokens": ref.split()} for ref in scene.references()],
            }
        )
    target = directory / "dataset_flickr30k.json"
    atomic_write_text(target, json.dumps({"images": entries, "dataset": "streamcap-demo"}))
    return target
