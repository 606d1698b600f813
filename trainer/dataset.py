"""The streaming training data: an IterableDataset over the run's shard registry in Redis.

    cfg = TrainerSettings(shard_dir=Path("shards"), run="run-1", loader_workers=4, batch_size=64, ...)
    dataset = ShardStreamDataset(cfg, model_cfg, tokenizer, LevelSchedule(ramp_steps=10_000, max_level=1.0),
                                 redis_url=cfg.require_redis(), rank=0, world_size=1)
    loader = make_loader(dataset)
    for batch in loader:   # never ends: fresh shards first, replays when they lag
        batch.images  # uint8 [B, 3, S, S]     batch.tokens  # int64 [B, T], padded with pad_id
        batch.stats   # fresh/replay samples, fresh-wait seconds, skipped samples, aug level used
        batch.finished, batch.state   # shards to record as read, the worker's resumable state

The loader takes the trainer's settings as they are (it reads the loader and caption ones) and
the model's config (input size, longest caption); each DataLoader worker gets both, pickled under
the spawn start method. Each worker (or the training process itself with 0 workers) builds whole
batches, so every batch carries the state of the worker that made it: the training process keeps
the latest state per worker and saves it with each checkpoint (see `trainer.stream`).

Nothing raises out of a worker for bad data: a sample that cannot be used (corrupt tar member,
undecodable image, image bytes that fail their checksum, missing caption column, empty caption)
is skipped, counted and logged with its shard and key; a Redis outage is waited out. Once
--max-unusable-shards shard reads in a row gave no usable sample (trainer.unusable), the worker
yields `NoUsableData` instead of a batch: the training process stops the run with its line.

With --shard-dir s3://bucket/prefix each worker reads shards through a local cache of the bucket
(--shard-cache, --shard-cache-bytes: trainer.shardcache), and one worker per rank (the first)
runs the prefetcher that downloads the shards the run will hand out next.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from streamcap import bus
from streamcap.common.lifetime import die_with_parent
from streamcap.common.store import open_store
from streamcap.model.config import ModelConfig
from streamcap.trainer.augment import Augmenter, LevelSchedule
from streamcap.trainer.config import TrainerSettings
from streamcap.trainer.samples import (
    CaptionChoice,
    SampleError,
    check_intact,
    choose_caption,
    collate,
    decode_image,
    encode_caption,
)
from streamcap.trainer.shardcache import Prefetcher, ShardCache
from streamcap.trainer.shardqueue import FinishedShard, ShardQueue, consumer_name, job_consumers, parent_watch
from streamcap.trainer.stream import SampleStream

log = logging.getLogger(__name__)

MAX_PROBLEM_LOGS = 200  # per worker; past this, problems are only counted


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [B, 3, S, S]
    tokens: torch.Tensor  # int64 [B, T]
    captions: list[str]
    keys: list[str]  # <shard>/<sample key> of each row: what a skipped step names
    worker: int
    stats: dict[str, float]
    finished: list[dict[str, Any]]  # FinishedShard.to_dict() of shards this batch completes
    state: dict[str, Any]  # the worker's stream state right after this batch

    def finished_shards(self) -> list[FinishedShard]:
        return [FinishedShard.from_dict(d) for d in self.finished]

    def pin_memory(self) -> Batch:
        self.images, self.tokens = self.images.pin_memory(), self.tokens.pin_memory()
        return self


@dataclass
class NoUsableData:
    """What a loader worker yields instead of a batch once its shards hold nothing to train on."""

    worker: int
    reason: str  # the one line the run stops with

    def pin_memory(self) -> NoUsableData:
        return self


class ShardStreamDataset(IterableDataset):
    """Endless batches for one rank; see the module docstring."""

    def __init__(
        self,
        cfg: TrainerSettings,
        model: ModelConfig,
        tokenizer: Any,
        levels: LevelSchedule,
        *,
        redis_url: str,
        rank: int = 0,
        world_size: int = 1,
        worker_states: dict[int, dict[str, Any]] | None = None,
        while_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        """`cfg.run` names the run; `redis_url` is the resolved one (`require_redis`, password included).
        `while_waiting` is called while no sample exists at all, with 0 loader workers only (the
        wait then runs in the training process); it may raise to end the wait."""
        super().__init__()
        self.cfg, self.model, self.tokenizer, self.levels = cfg, model, tokenizer, levels
        self.redis_url, self.rank, self.world_size = redis_url, rank, world_size
        self.worker_states = worker_states or {}
        self.while_waiting = while_waiting

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers get no hook of the training process (it could not be pickled anyway).
        return self.__dict__ | {"while_waiting": _nothing}

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            # Ctrl-C reaches the whole process group: the training process handles it and shuts the
            # workers down. SIGTERM is how the DataLoader ends a worker that does not answer its
            # shutdown (one waiting for shards): it must keep its default, or the rank hangs at exit.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # A process group of its own: torchrun stops a rank by signalling the rank's whole group,
            # which would kill the workers under it (a `DataLoader worker ... killed by signal`
            # traceback instead of the rank's checkpoint). The rank shuts its workers down itself.
            os.setpgid(0, 0)
            die_with_parent(signal.SIGTERM)  # a worker waiting for shards ends with its rank
            torch.set_num_threads(1)
        return _BatchMaker(self, worker, in_worker=info is not None).batches()


class _BatchMaker:
    """Everything one worker holds: its Redis consumer, sample stream and augmenter."""

    def __init__(self, dataset: ShardStreamDataset, worker: int, in_worker: bool) -> None:
        cfg, rank = dataset.cfg, dataset.rank
        self.cfg, self.model, self.worker, self.levels = cfg, dataset.model, worker, dataset.levels
        self.caption = CaptionChoice(cfg.caption_column, cfg.caption_sentences)
        self.made = 0  # batches this worker made since the loader started
        self.tokenizer = dataset.tokenizer
        self.augment = Augmenter(self.model.image_size)
        self.problems_logged = 0
        r = bus.connect(dataset.redis_url)
        consumer = consumer_name(cfg.run, rank, worker)
        orphaned = parent_watch() if in_worker else (lambda: False)
        # Fails within a few seconds when Redis is down (longer than the longest fresh-shard wait).
        quick = bus.connect(
            dataset.redis_url, retries=0, connect_timeout=1.0, socket_timeout=cfg.fresh_wait_ms / 1000 + 2
        )
        queue = ShardQueue(r, bus.Keys(cfg.namespace), cfg.run, consumer, orphaned=orphaned, quick=quick)
        seed = _worker_seed(cfg.seed, rank, worker)
        self.stream = SampleStream(
            queue,
            cfg,
            on_problem=self._problem,
            worker_seed=seed,
            job_consumers=job_consumers(cfg.run, dataset.world_size, cfg.loader_workers),
            announce_waiting=rank == 0 and worker == 0,
            cache=_shard_cache(cfg, dataset.redis_url, prefetch=worker == 0),
            while_waiting=_nothing if in_worker else dataset.while_waiting,
        )
        self.seeds = np.random.default_rng(seed + 1)  # per-sample augmentation seeds, part of the state
        state = dataset.worker_states.get(worker)
        if state:
            self.stream.load_state_dict(state["stream"])
            self.seeds.bit_generator.state = state["seeds"]

    def batches(self) -> Iterator[Batch | NoUsableData]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch | NoUsableData:
        images, tokens, captions, keys = [], [], [], []
        # The DataLoader takes batches from its workers round robin, so this worker's n-th batch
        # is the loader's (n * workers + worker)-th: the level is that of the step training it.
        level = self.levels.level(self.made * max(self.cfg.loader_workers, 1) + self.worker)
        self.made += 1
        while len(images) < self.cfg.batch_size:
            sample, claim = self.stream.next_sample()
            aug_seed = int(self.seeds.integers(2**62))
            try:
                caption = choose_caption(sample, self.caption)
                ids = encode_caption(self.tokenizer, caption, self.model.max_len)
                check_intact(sample)
                image = self.augment(
                    decode_image(sample.image, sample.image_ext, self.model.image_size), level, aug_seed
                )
            except Exception as e:  # a library bug on odd data must not kill the worker either
                why = str(e) if isinstance(e, SampleError) else f"{type(e).__name__}: {e}"
                self._problem(f"{claim.name}/{sample.key}", why)
                self.stream.judge(why)
                verdict = self.stream.unusable_streak.verdict()
                if verdict:
                    return NoUsableData(self.worker, verdict)
                continue
            self.stream.judge(None)
            images.append(image)
            tokens.append(ids)
            captions.append(caption)
            keys.append(f"{claim.name}/{sample.key}")
        image_batch, token_batch = collate(images, tokens, self.tokenizer.pad_id)
        stats = self.stream.counters.take() | {"aug_level": level}
        return Batch(
            images=image_batch,
            tokens=token_batch,
            captions=captions,
            keys=keys,
            worker=self.worker,
            stats=stats,
            finished=[f.to_dict() for f in self.stream.take_finished()],
            state={"stream": self.stream.state_dict(), "seeds": self.seeds.bit_generator.state},
        )

    def _problem(self, where: str, why: str) -> None:
        self.stream.counters.problems += 1
        if self.problems_logged < MAX_PROBLEM_LOGS:
            self.problems_logged += 1
            log.warning("skipping bad data in %s: %s", where, why)
            if self.problems_logged == MAX_PROBLEM_LOGS:
                log.warning("further bad data in this loader worker is counted, not logged")


def _shard_cache(cfg: TrainerSettings, redis_url: str, prefetch: bool) -> ShardCache | None:
    """For a bucket: the shard cache, and (with `prefetch`: one loader worker per rank) its prefetcher."""
    store = open_store(cfg.shard_dir)
    if not store.remote:
        return None
    cache = ShardCache(store, cfg.shard_cache, cfg.shard_cache_bytes)
    if prefetch:
        Prefetcher(cache, redis_url, bus.Keys(cfg.namespace), cfg.run).start()
    return cache


def _nothing() -> None:
    pass


def _worker_seed(seed: int, rank: int, worker: int) -> int:
    return int(np.random.SeedSequence([seed, rank, worker]).generate_state(1)[0])


LOADER_POLL_S = 2.0  # how often a wait for a batch from loader workers looks up (e.g. for SIGTERM)


def make_loader(dataset: ShardStreamDataset, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over already-made batches (batch_size=None). With worker processes, a wait
    for a batch gives up every LOADER_POLL_S (see `next_batch`)."""
    workers = dataset.cfg.loader_workers
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        collate_fn=_keep_batch,
        timeout=LOADER_POLL_S if workers else 0,
    )


def close_loader(batches: Iterator[Batch]) -> None:
    """Shut the loader's workers down now. Dropping the iterator is not enough: a stop's traceback
    may still hold it, and workers left to the interpreter's exit are terminated under the
    DataLoader's SIGCHLD handler ("Exception ignored in atexit callback ... Terminated")."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # workers only (none with 0 workers)
    if shutdown is not None:
        shutdown()


def next_batch(batches: Iterator[Batch | NoUsableData], give_up: Callable[[], bool]) -> Batch | NoUsableData:
    """The next batch, however long it takes, unless `give_up()` turns true meanwhile.

    A DataLoader timeout leaves the iterator intact (nothing was received), so the wait simply
    resumes; `give_up()` is asked between tries and StopIteration ends the wait.
    """
    while True:
        try:
            return next(batches)
        except RuntimeError as e:
            if "timed out" not in str(e):
                raise
            if give_up():
                raise StopIteration from None


def _keep_batch(batch: Batch | NoUsableData) -> Batch | NoUsableData:
    return batch
