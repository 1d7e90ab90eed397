"""``TeacherCache``: the frozen teacher's outputs over the training set, computed once, read from disk every step.

A KD step costs at least a teacher forward pass plus a student step; reading stored teacher outputs removes the
teacher from the step. The cache is the store of :class:`~kd_lightning.teachers.cached.CachedTeacher`, a teacher
source that reads it in training (validation and test still run the live teacher); nothing else changes.

**Same view for teacher and student.** A target stored per sample is only right for the view the teacher saw: Beyer
et al., CVPR 2022 ("Knowledge distillation: A good teacher is patient and consistent") show that a cache keyed by the
sample alone, with the student seeing other augmented views, hurts. So the cache stores ``views`` (K) views per
sample — view ``k`` of sample ``i`` is ``dataset.sample(i, k)``, the dataset's augmentation of epoch ``k``, replayed
from ``(seed, k, i)`` (FKD, Shen & Xing, ECCV 2022, stores crop parameters for the same purpose) — and the dataset is
set to yield, in epoch ``e``, the views of epoch ``e mod K`` (:meth:`ReplayableDataset.replayed_epoch
<kd_lightning.data.base.ReplayableDataset.replayed_epoch>`), in a new order every epoch. With a deterministic
transform, ``views: 1``. Every training step checks that the batch is the stored view: two float64 checksums per
sample (a sum and a seeded random projection of the input) are stored beside the outputs and compared, so a
non-replayable transform, a changed dataset or a wrong view is an error, never a silently wrong target.

**Never stale.** The cache lives in ``<directory>/<key>/`` where ``key`` is a SHA-256 of what the teacher computes
(its weights, class, architecture and settings: every plain attribute of every submodule, dtype and input
normalisation, the fit's precision), the dataset (class, size, seed, transform, and the bytes of probe samples of every
view), ``views``, the stored outputs and their format: any change gives another key, so the cache is rebuilt, and
the message says what changed against the caches already there. When a cache is opened, the stored logits of a
few samples are compared with the live teacher's: a teacher that computes something else than the key can see is
caught there and the cache rebuilt, with the reason. A build writes ``<key>.building/`` and renames it
when complete, so an interrupted build is never read.

**Layout** (``.npy`` files, memory-mapped, shared by all DDP processes, which also share the build): ``logits.npy``
``[K, N, C]`` in ``dtype`` (float16 by default, float32 for bit-exact targets), or with ``top_k``: ``topk_values.npy``
and ``topk_indices.npy`` ``[K, N, k]`` plus ``logsumexp.npy`` ``[K, N]`` (for many classes; token outputs go into a
:mod:`~kd_lightning.teachers.token_store`; the
dense logits are rebuilt exact on the top k at temperature 1, the remaining probability mass spread evenly over the
other classes); ``feature<j>.npy`` ``[K, N, ...]`` for every teacher feature the terms read; ``checksums.npy``
``[K, N, 2]``; ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from kd_lightning.core.batch import Batch
from kd_lightning.core.taps import LOGITS

FORMAT = "kd_lightning.TeacherCache/1"
STORED_DTYPES = {"float16": np.float16, "float32": np.float32}
PROBES = 16
"""Samples per view whose bytes enter the key (evenly spaced over the dataset)."""
SPOT_CHECKS = 4
"""Samples whose stored logits are compared with the live teacher's when a cache is opened."""
SPOT_TOLERANCE = {"float16": 2e-2, "float32": 1e-4}
"""Largest difference, relative to ``1 + max |logit|``, between stored and live logits of an unchanged teacher."""
CHECKSUM_SEED = 0x5EED
TeacherFn = Callable[[Sequence[Tensor]], Mapping[str, Tensor]]


class TeacherCacheError(ValueError):
    """A teacher cache cannot be built or read as configured (the message names the setting and the fix)."""


def dense_logits(values: Tensor, indices: Tensor, logsumexp: Tensor, num_classes: int) -> Tensor:
    """Logits ``[B, C]`` from the top-k logits ``[B, k]``, their class indices ``[B, k]`` and ``logsumexp`` ``[B]``.

    The result's softmax equals the teacher's on the top k classes; the rest of the probability mass,
    ``1 - sum_k p_k``, is spread evenly over the other ``C - k`` classes (log-probabilities are returned).
    """
    log_probs = values.float() - logsumexp.float()[:, None]
    rest = num_classes - values.shape[1]
    dense = torch.empty(values.shape[0], num_classes, dtype=torch.float32, device=values.device)
    if rest:
        tail_mass = (1 - log_probs.exp().sum(1)).clamp_min(1e-12)
        dense[:] = (tail_mass / rest).log()[:, None]
    return dense.scatter_(1, indices.long(), log_probs)


class TeacherCache:
    """Teacher outputs over the training set, stored once on disk, for offline distillation without the teacher.

    Args:
        directory: where caches are kept (one sub-folder per key; must be writable for a build).
        views: K, the augmented views stored per sample (1 for a deterministic transform). Epoch ``e`` trains on
            view ``e mod K``; with augmentation and ``K`` smaller than the epochs, views repeat (a warning says so).
        dtype: storage of logits and features, ``"float16"`` (half the disk) or ``"float32"`` (exact targets).
        top_k: store only the ``k`` largest logits per sample (with their indices), for many classes.
        layers: the teacher features to store (``named_modules()`` paths); ``None``: every one the terms read. A term
            reading a feature the cache does not store is an error.
        batch_size: samples per teacher forward pass while building.
        num_workers: loader workers while building.
        rebuild: build again even when a matching cache exists.

    Example (YAML, under the model's ``init_args``)::

        teacher_cache:
          class_path: kd_lightning.TeacherCache
          init_args: {directory: cache/digits, views: 1}
    """

    def __init__(
        self,
        directory: str | Path = "cache/teacher",
        views: int = 1,
        dtype: str = "float16",
        top_k: int | None = None,
        layers: Sequence[str] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        rebuild: bool = False,
    ) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise TeacherCacheError(f"expected teacher_cache views to be an integer >= 1 but got views={views!r}.")
        if dtype not in STORED_DTYPES:
            raise TeacherCacheError(f"expected teacher_cache dtype in {list(STORED_DTYPES)} but got dtype={dtype!r}.")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise TeacherCacheError(f"expected teacher_cache top_k to be None or an integer >= 1 but got {top_k!r}.")
        if batch_size < 1 or num_workers < 0:
            raise TeacherCacheError(
                f"expected teacher_cache batch_size >= 1 and num_workers >= 0 but got {batch_size}, {num_workers}."
            )
        self.directory, self.views, self.dtype, self.top_k = Path(directory), views, dtype, top_k
        self.layers = None if layers is None else list(layers)
        self.batch_size, self.num_workers, self.rebuild = batch_size, num_workers, rebuild
        self.path: Path | None = None
        self.build_seconds: float | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._projection: dict[torch.device, Tensor] = {}
        self._num_classes = 0
        self._features: list[str] = []
        self._released: tuple[Any, int | None, bool] | None = None

    # ----------------------------------------------------------------- dataset
    def prepare_dataset(self, dataset: Dataset) -> None:
        """Make the training dataset yield the stored views and the sample index (before its loader iterates).

        The dataset's own ``views`` and ``return_index`` are given back by :meth:`release_dataset` when the fit ends
        (and before a later fit, should one have failed before its end)."""
        self.release_dataset()
        if len(dataset) and isinstance(dataset[0], Mapping):
            raise TeacherCacheError(
                f"the teacher cache stores the teacher's outputs for (x, y, index) samples but "
                f"{type(dataset).__name__} yields dicts (token sequences); a language model's outputs are labelled "
                f"once into a token store instead: kd-lightning-label --config <this config> --store DIR, then train "
                f"with teacher: {{class_path: kd_lightning.TokenStoreTeacher, init_args: {{path: DIR}}}} (or remove "
                f"teacher_cache: the teacher then runs every step)."
            )
        replayable = callable(getattr(dataset, "sample", None)) and hasattr(dataset, "views")
        if self.views > 1 and not replayable:
            raise TeacherCacheError(
                f"teacher_cache views={self.views} needs a training dataset whose augmented views can be replayed "
                f"(kd_lightning.data.ReplayableDataset: sample(index, epoch)) but got {type(dataset).__name__}; use "
                f"one of kd_lightning's datamodules, derive your dataset from ReplayableDataset, or set views: 1 "
                f"with a deterministic transform."
            )
        if replayable:
            self._released = (dataset, dataset.views, dataset.return_index)
            dataset.views = self.views
            dataset.return_index = True
            if getattr(dataset, "augment", False) and self.views == 1:
                warnings.warn(
                    "teacher_cache views=1 with an augmented dataset: every epoch replays the same augmented view of "
                    "each sample (the one the teacher saw); set views to the number of epochs for a new view per "
                    "epoch.",
                    stacklevel=2,
                )

    def release_dataset(self) -> None:
        """Give the dataset back its own ``views`` and ``return_index`` (after the fit: a later fit without the cache
        gets a new view every epoch again)."""
        released, self._released = self._released, None
        if released is not None:
            dataset, dataset.views, dataset.return_index = released[0], released[1], released[2]

    def _view(self, dataset: Dataset, index: int, view: int) -> tuple[Tensor, ...]:
        if callable(getattr(dataset, "sample", None)):
            return dataset.sample(index, view)
        return dataset[index]

    # ----------------------------------------------------------------- key
    def key_parts(self, dataset: Dataset, teacher: Mapping[str, Any], layers: Sequence[str]) -> dict[str, Any]:
        """What the cache depends on: teacher identity, dataset identity and probe views, K and the stored format."""
        probes = sorted({round(i * (len(dataset) - 1) / max(PROBES - 1, 1)) for i in range(PROBES)})
        digest = hashlib.sha256()
        for view in range(self.views):
            for index in probes:
                for item in self._view(dataset, index, view)[:2]:
                    tensor = torch.as_tensor(item).contiguous()
                    digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
                    digest.update(tensor.numpy().tobytes())
        transform = getattr(dataset, "transform", None)
        return {
            "format": FORMAT,
            "teacher": dict(teacher),
            "dataset": {
                "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
                "size": len(dataset),
                "seed": getattr(dataset, "seed", None),
                "transform": None if transform is None else repr(transform),
                "probes": digest.hexdigest(),
            },
            "views": self.views,
            "stored": {"layers": list(layers), "dtype": self.dtype, "top_k": self.top_k},
        }

    @staticmethod
    def key_of(parts: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    # ----------------------------------------------------------------- open or build
    def open(
        self,
        teacher_fn: TeacherFn,
        dataset: Dataset,
        teacher: Mapping[str, Any],
        layers: Sequence[str],
        trainer: Any,
    ) -> None:
        """Open the cache matching ``teacher``/``dataset``, building it first (all processes share the work).

        Args:
            teacher_fn: the module's live teacher, ``batch -> {"logits": [B, C], layer: feature}`` (eval, no grad).
            dataset: the training dataset (after :meth:`prepare_dataset`).
            teacher: the teacher's identity (weights fingerprint, class, dtype, input normalisation).
            layers: the teacher outputs the terms read (``"logits"`` and module paths).
            trainer: the Lightning Trainer (rank, barrier, progress bar, logger).
        """
        features = [name for name in layers if name != LOGITS]
        if self.layers is not None:
            missing = [name for name in features if name not in self.layers]
            if missing:
                raise TeacherCacheError(
                    f"the distillation terms read teacher features {missing} that teacher_cache does not store "
                    f"(layers={self.layers}); add them to teacher_cache.init_args.layers, or set layers: null to "
                    f"store every feature the terms read."
                )
            features = [name for name in self.layers if name != LOGITS]
        self._features = features
        with torch.random.fork_rng(devices=[]):  # reading samples and the build leave the run's random streams alone
            parts = self.key_parts(dataset, teacher, features)
            self.path = self.directory / self.key_of(parts)
            self.build_seconds = None
            missing = self.rebuild or not (self.path / "manifest.json").is_file()
            built = trainer.strategy.broadcast(missing, src=0)  # one decision for every process
            if built:
                self._build(teacher_fn, dataset, parts, trainer)
            self._load()
            reason = None if built else trainer.strategy.broadcast(self.spot_check(teacher_fn, dataset), src=0)
            if reason:
                if trainer.global_rank == 0:
                    print(f"teacher cache: {reason}; rebuilding {self.path}")
                self._arrays = {}
                self._build(teacher_fn, dataset, parts, trainer)
                self._load()

    def spot_check(self, teacher_fn: TeacherFn, dataset: Dataset) -> str | None:
        """Compare the stored logits of a few samples (view 0) with the live teacher's; why they differ, or ``None``.

        The key covers the teacher's weights, class, settings and input handling; this catches what it cannot see (a
        forward that depends on something else), so a cache opened beside a teacher that computes something else is
        rebuilt rather than read.
        """
        count = min(SPOT_CHECKS, len(dataset))
        indices = np.array(sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)}))
        live = teacher_fn(default_collate([self._view(dataset, int(i), 0) for i in indices]))[LOGITS]
        live = live.detach().float().cpu()
        stored = self._stored_logits(0, indices, live.device)
        if self.top_k is not None:
            live = live.gather(1, _rows(self._arrays["topk_indices"], 0, indices, live.device).long())
        scale = 1.0 + float(live.abs().max())
        difference = float((stored - live).abs().max())
        if difference <= SPOT_TOLERANCE[self.dtype] * scale:
            return None
        return (
            f"the stored outputs of samples {indices.tolist()} differ from the live teacher's by up to "
            f"{difference:.3g}: the teacher computes something else than when the cache was built (same weights and "
            f"settings as far as the key sees; e.g. its forward reads another attribute)"
        )

    def _stored_logits(self, view: int, index: np.ndarray, device: torch.device) -> Tensor:
        """The stored logits of ``index`` (``[n, C]``, or the top-k values ``[n, k]``)."""
        if self.top_k is None:
            return _rows(self._arrays["logits"], view, index, device)
        return _rows(self._arrays["topk_values"], view, index, device)

    def _build(self, teacher_fn: TeacherFn, dataset: Dataset, parts: dict[str, Any], trainer: Any) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        building = self.path.with_name(self.path.name + ".building")
        self.check_replayable(dataset)  # every process checks, so a mistake stops all of them, before any barrier
        first = self._first_outputs(teacher_fn, dataset)
        self._check_writable()
        if rank == 0:
            if self.path.exists():
                shutil.rmtree(self.path)
            if building.exists():
                shutil.rmtree(building)
            building.mkdir(parents=True)
            reason = self.stale_reason(parts)
            if reason:
                print(f"teacher cache: {reason}; building {self.path}")
        trainer.strategy.barrier("teacher_cache_created")
        start = time.perf_counter()
        if rank == 0:
            self._create_arrays(building, first, len(dataset))
        trainer.strategy.barrier("teacher_cache_allocated")
        arrays = self._arrays_in(building, mode="r+")
        shown = rank == 0 and getattr(trainer, "progress_bar_callback", None) is not None
        with _progress(self.views * math.ceil(len(dataset) / world), shown) as advance:
            for view in range(self.views):
                for indices, batch in self._batches(dataset, view, rank, world):
                    self._write(arrays, view, indices, batch, teacher_fn(batch))
                    advance(len(indices))
        for array in arrays.values():
            array.flush()
        del arrays
        trainer.strategy.barrier("teacher_cache_written")
        self.build_seconds = time.perf_counter() - start
        if rank == 0:
            manifest = {
                "key": parts,
                "build_seconds": self.build_seconds,
                "samples": len(dataset),
                "classes": self._num_classes,
            }
            (building / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(building, self.path)
            size = sum(f.stat().st_size for f in self.path.iterdir()) / 2**20
            print(
                f"teacher cache: built in {self.build_seconds:.1f} s ({len(dataset)} samples x {self.views} view(s), "
                f"{size:.1f} MiB) at {self.path}"
            )
        trainer.strategy.barrier("teacher_cache_complete")
        logger = getattr(trainer, "logger", None)
        if logger is not None and rank == 0:
            logger.log_metrics({"cache/build_seconds": self.build_seconds}, step=0)

    def _check_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise TeacherCacheError(
                f"teacher_cache directory {str(self.directory)!r} is not writable ({error.strerror or error}): the "
                f"cache cannot be built there; set teacher_cache.init_args.directory to a writable folder."
            ) from None

    def stale_reason(self, parts: Mapping[str, Any]) -> str:
        """Why no cache matches: what differs from the caches already in ``directory`` (empty when none exist)."""
        if self.rebuild:
            return "rebuild requested"
        others = []
        for manifest in sorted(self.directory.glob("*/manifest.json")):
            try:
                others.append(json.loads(manifest.read_text())["key"])
            except (OSError, ValueError, KeyError):
                continue
        if not others:
            return "no cache yet"
        labels = {"teacher": "the teacher's weights or settings", "dataset": "the dataset or its transform"}
        labels.update({"views": "views", "stored": "the stored outputs (layers, dtype, top_k)", "format": "format"})
        changed = [label for name, label in labels.items() if all(other.get(name) != parts[name] for other in others)]
        return f"the cache(s) already in {self.directory} differ in {', '.join(changed) or 'their settings'}"

    def _first_outputs(self, teacher_fn: TeacherFn, dataset: Dataset) -> Mapping[str, Tensor]:
        item = default_collate([self._view(dataset, 0, 0)])
        outputs = teacher_fn(item)
        self._num_classes = outputs[LOGITS].shape[-1]
        if self.top_k is not None and self.top_k >= self._num_classes:
            raise TeacherCacheError(
                f"teacher_cache top_k={self.top_k} must be smaller than the teacher's {self._num_classes} classes; "
                f"set top_k: null to store all logits."
            )
        return outputs

    def _create_arrays(self, folder: Path, first: Mapping[str, Tensor], size: int) -> None:
        views, dtype = self.views, STORED_DTYPES[self.dtype]
        specs: dict[str, tuple[tuple[int, ...], Any]] = {"checksums": ((views, size, 2), np.float64)}
        if self.top_k is None:
            specs["logits"] = ((views, size, self._num_classes), dtype)
        else:
            index_dtype = np.int16 if self._num_classes <= np.iinfo(np.int16).max else np.int32
            specs["topk_values"] = ((views, size, self.top_k), dtype)
            specs["topk_indices"] = ((views, size, self.top_k), index_dtype)
            specs["logsumexp"] = ((views, size), np.float32)
        for number, name in enumerate(self._features):
            specs[f"feature{number}"] = ((views, size, *first[name].shape[1:]), dtype)
        for name, (shape, array_dtype) in specs.items():
            np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=array_dtype, shape=shape).flush()

    def _arrays_in(self, folder: Path, mode: str) -> dict[str, np.ndarray]:
        return {f.stem: np.load(f, mmap_mode=mode) for f in sorted(folder.glob("*.npy"))}

    def _batches(self, dataset: Dataset, view: int, rank: int, world: int) -> Iterator[tuple[np.ndarray, list]]:
        """This process's share of the samples (every ``world``-th block), collated, with their indices."""
        indices = np.arange(len(dataset))
        blocks = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)][rank::world]
        loader = DataLoader(
            _ViewsOf(self, dataset, view),
            batch_sampler=[block.tolist() for block in blocks],
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(CHECKSUM_SEED),
        )
        yield from zip(blocks, loader, strict=True)

    def _write(
        self, arrays: dict[str, np.ndarray], view: int, indices: np.ndarray, batch: Sequence[Tensor], outputs: Any
    ) -> None:
        arrays["checksums"][view, indices] = self.checksums(batch[0]).cpu().numpy()
        logits = outputs[LOGITS].detach().float().cpu()
        if self.top_k is None:
            arrays["logits"][view, indices] = logits.numpy()
        else:
            values, top = logits.topk(self.top_k, dim=-1)
            arrays["topk_values"][view, indices] = values.numpy()
            arrays["topk_indices"][view, indices] = top.numpy()
            arrays["logsumexp"][view, indices] = logits.logsumexp(-1).numpy()
        for number, name in enumerate(self._features):
            arrays[f"feature{number}"][view, indices] = outputs[name].detach().float().cpu().numpy()

    def check_replayable(self, dataset: Dataset) -> None:
        """Read the first samples of every view twice: a transform with unseeded randomness differs the second time."""
        count = min(len(dataset), 8)
        for view in range(self.views):
            first, again = (
                self.checksums(default_collate([self._view(dataset, i, view) for i in range(count)])[0])
                for _ in range(2)
            )
            if not torch.allclose(first, again, rtol=1e-6, atol=1e-9):
                raise TeacherCacheError(
                    f"the training transform of {type(dataset).__name__} gives another tensor each time sample 0 is "
                    f"read (view {view}): its randomness cannot be replayed, so the student would not see the view "
                    f"the teacher's stored output is for; draw the augmentation from (seed, epoch, index) as "
                    f"kd_lightning.data.ReplayableDataset does, or cache without augmentation (views: 1)."
                )

    def _load(self) -> None:
        self._arrays = self._arrays_in(self.path, mode="r")
        manifest = json.loads((self.path / "manifest.json").read_text())
        self.samples, self._num_classes = int(manifest["samples"]), int(manifest["classes"])

    # ----------------------------------------------------------------- reading
    @property
    def is_open(self) -> bool:
        return bool(self._arrays)

    def checksums(self, inputs: Tensor) -> Tensor:
        """``[B, 2]`` float64: the sum of each input and its projection on a fixed random vector (seeded)."""
        flat = inputs.detach().reshape(len(inputs), -1).double()
        projection = self._projection.get(flat.device)
        if projection is None or projection.numel() != flat.shape[1]:
            generator = torch.Generator().manual_seed(CHECKSUM_SEED)
            projection = torch.randn(flat.shape[1], generator=generator, dtype=torch.float64).to(flat.device)
            self._projection[flat.device] = projection
        return torch.stack([flat.sum(1), flat @ projection], dim=1)

    def outputs(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """The stored teacher outputs for a training batch (its ``index``) in ``epoch`` (view ``epoch mod K``)."""
        batch = Batch.parse(batch)
        if batch.index is None:
            raise TeacherCacheError(
                "the teacher cache needs each sample's index in the training batch, (x, y, index), but the batch has "
                "none; kd_lightning's datamodules add it by themselves, your dataset must return it."
            )
        x, index = batch.inputs, batch.index.cpu().numpy()
        if index.size and (index.min() < 0 or index.max() >= self.samples):
            raise TeacherCacheError(
                f"a batch holds sample index {int(index.max())} but the teacher cache has {self.samples} samples: the "
                f"training set changed since the cache was built; set teacher_cache.init_args.rebuild: true."
            )
        view = epoch % self.views
        self._check_view(x, view, index)
        device = x.device
        arrays = self._arrays
        if self.top_k is None:
            logits = _rows(arrays["logits"], view, index, device)
        else:
            logits = dense_logits(
                _rows(arrays["topk_values"], view, index, device),
                _rows(arrays["topk_indices"], view, index, device),
                _rows(arrays["logsumexp"], view, index, device),
                self._num_classes,
            )
        outputs = {LOGITS: logits}
        for number, name in enumerate(self._features):
            outputs[name] = _rows(arrays[f"feature{number}"], view, index, device)
        return outputs

    def _check_view(self, x: Tensor, view: int, index: np.ndarray) -> None:
        stored = torch.from_numpy(np.ascontiguousarray(self._arrays["checksums"][view, index])).to(x.device)
        seen = self.checksums(x)
        rtol = 1e-6 if x.dtype in (torch.float32, torch.float64) else 2e-2
        tolerance = rtol * (x.detach().reshape(len(x), -1).double().abs().sum(1) * 4 + 1)[:, None]
        if bool(((seen - stored).abs() > tolerance).any()):
            raise TeacherCacheError(
                f"the training batch is not the view the teacher cache holds outputs for (view {view} of samples "
                f"{index[:4].tolist()}...): the dataset, its transform or the order of its views changed after the "
                f"cache was built, or its randomness is not replayable; rebuild the cache (teacher_cache.init_args."
                f"rebuild: true) and make the augmentation a function of (seed, epoch, index)."
            )

    def extra_repr(self) -> str:
        return f"directory={str(self.directory)!r}, views={self.views}, dtype={self.dtype!r}, top_k={self.top_k}"

    def __repr__(self) -> str:
        return f"TeacherCache({self.extra_repr()})"


def _rows(array: np.ndarray, view: int, index: np.ndarray, device: torch.device) -> Tensor:
    """Rows ``index`` of view ``view`` of a memory-mapped array, as a float32 (or integer) tensor on ``device``."""
    rows = torch.from_numpy(np.ascontiguousarray(array[view, index]))
    rows = rows.float() if rows.is_floating_point() else rows
    return rows.to(device, non_blocking=True)


class _ViewsOf(Dataset):
    """Sample ``i`` of ``dataset`` with the view of epoch ``view`` (what the build reads)."""

    def __init__(self, cache: TeacherCache, dataset: Dataset, view: int) -> None:
        self.cache, self.dataset, self.view = cache, dataset, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return self.cache._view(self.dataset, index, self.view)


@contextlib.contextmanager
def _progress(total: int, shown: bool) -> Iterator[Callable[[int], None]]:
    """A tqdm bar over the build (rank 0 with a progress bar) yielding its ``update``, or a no-op."""
    if not shown:
        yield lambda count: None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="teacher cache", unit="sample", leave=False) as bar:
        yield bar.update
