"""A language-model teacher's outputs over a token corpus, labelled once and read in training.

Offline distillation of a language model spends most of its step in the teacher. :func:`label_corpus` runs the
teacher once over the training split and writes the outputs the distillation terms read (``outputs``, by the names the
terms use):

* ``"logits"`` of a language model: per real token of every sample the ``top_k`` largest logits (float16, or float32
  for exact targets), their token ids (``uint16`` when the vocabulary fits, else ``int32``) and the log-normaliser of
  the full logits (``logsumexp``, float32), so the probability mass outside the top k is known; ``top_k=None`` stores
  every logit (dense, in vocabulary order, no ids);
* per-token states ``[T, D]`` (in the value dtype): a ``named_modules()`` path (``encoder.layer.2``), or ``"logits"``
  of an encoder without a head (its last hidden states);
* ``"pooled"``: one sentence embedding per sample ``[H]`` (float32), the last hidden states averaged over the real
  tokens (:data:`kd_lightning.core.taps.POOLED`).

:class:`TokenStoreTeacher` reads them back by ``Batch.index`` (logits as
:class:`~kd_lightning.losses.token.SparseLogits`, states as ``[B, L, D]``, pooled as ``[B, H]``): training never builds
the teacher network.

**Layout** (a folder)::

    key.json                 what the store is of (below); written first
    shard-00000/             samples [0, shard_size): values.npy [T, k] (or [T, V] dense), indices.npy [T, k]
                             (top-k only), logsumexp.npy [T] (T = the shard's tokens), states-<i>.npy [T, D] (the
                             i-th stored output), pooled.npy [n, H] (n = the shard's samples), meta.json
    ...
    index.json               written last, once every shard is there: the key and, per sample, its shard, first row
                             and length

A shard is written into a temporary folder and renamed when complete, so a shard folder is always whole; a store
without ``index.json`` is an interrupted labelling, and labelling it again writes only the missing shards. Each
process of a distributed run writes the shards ``s`` with ``s % world_size == rank``: shards never depend on the
number of processes.

**The key** names the teacher (class, a SHA-256 of its weights, its configuration), the tokenizer (a SHA-256 of its
files), the corpus (a SHA-256 of every sample's token ids), the stored outputs, ``top_k`` and the value dtype.
Labelling into a folder holding a store with another key is refused (a store is never replaced silently); a
:class:`TokenStoreTeacher` opened on another corpus, tokenizer or (when given one) teacher is refused, with the part
that differs; one whose terms read an output the store does not hold is refused, with the outputs it holds. Every
training batch is also checked against a per-sample checksum of its token ids.

Why numpy memory maps and not litdata's ``optimize``/``StreamingDataset``: the rows are read by sample index, in the
order of the student's own loader (whose seeded order and mid-epoch resume stay as they are), from a local or shared
file system; ``.npy`` shards memory-map with no extra dependency and read exactly the rows a batch needs. litdata is
the tool to stream such shards from object storage, and its chunks could hold the same arrays.

Bytes per stored token: ``k * (value bytes + index bytes) + 4`` for top-k logits, ``V * value bytes + 4`` dense
(:func:`bytes_per_token`), plus ``D * value bytes`` per stored state; ``4 * H`` per sample for ``pooled``
(:meth:`TokenStore.bytes_per_token`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kd_lightning.core.batch import Batch, parse_parts
from kd_lightning.core.taps import LOGITS, POOLED, FeatureTap
from kd_lightning.files.local_dirs import TOKENIZER_FILES
from kd_lightning.files.weights import state_digest
from kd_lightning.losses.token import MISSING_MASS, SparseLogits
from kd_lightning.teachers.base import EXTERNAL, Outputs, TeacherSource
from kd_lightning.teachers.frozen import FrozenTeacher

FORMAT = "kd_lightning.TokenStore/1"
LOGIT_ROWS, STATES, SAMPLE_VECTORS = "logits", "states", "pooled"
"""The kinds of stored outputs: top-k or dense logits with their log-normaliser, per-token states, per-sample
vectors."""
VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}
KEY_FILE, INDEX_FILE, META_FILE = "key.json", "index.json", "meta.json"
KEY_PARTS = {
    "teacher": "teacher (its class, weights or configuration)",
    "tokenizer": "tokenizer (its files)",
    "corpus": "corpus (the token ids of the training samples)",
    "outputs": "stored outputs",
    "top_k": "top_k",
    "dtype": "value dtype",
    "format": "store format",
}


class TokenStoreError(ValueError):
    """A token store cannot be written or read as asked (the message names what differs and the fix)."""


# ----------------------------------------------------------------- sizes and identities
def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer dtype of the stored token ids: ``uint16`` for ``V <= 65535``, else ``int32``."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32)


def bytes_per_token(vocab_size: int, top_k: int | None, dtype: str = "float16") -> int:
    """Stored bytes per token: ``k`` values and ids plus the float32 log-normaliser; dense (``None``): ``V`` values.

    Example:
        >>> bytes_per_token(50257, 32), bytes_per_token(4096, None)
        (132, 8196)
    """
    value = np.dtype(VALUE_DTYPES[dtype]).itemsize
    if top_k is None:
        return vocab_size * value + 4
    return top_k * (value + index_dtype(vocab_size).itemsize) + 4


def network_of(teacher: nn.Module) -> nn.Module:
    """The network of a teacher given as a network or a :class:`FrozenTeacher`."""
    return teacher.network if isinstance(teacher, FrozenTeacher) else teacher


def teacher_identity(teacher: nn.Module) -> dict[str, Any]:
    """The teacher part of the key: class, SHA-256 of the weights, configuration (a Hugging Face ``config``)."""
    network = network_of(teacher)
    config = getattr(network, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else repr(network)
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if k not in ("transformers_version", "_name_or_path")}
    identity = {
        "class": f"{type(network).__module__}.{type(network).__qualname__}",
        "weights": state_digest(network),
        "config": settings,
    }
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def tokenizer_digest(tokenizer: Any) -> str | None:
    """SHA-256 of a tokenizer's files (a folder, or a tokenizer loaded from one); its vocabulary when it has none."""
    if tokenizer is None:
        return None
    folder = Path(tokenizer if isinstance(tokenizer, (str, Path)) else getattr(tokenizer, "name_or_path", "") or "")
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()] if folder.is_dir() else []
    digest = hashlib.sha256()
    if files:
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        return digest.hexdigest()
    if isinstance(tokenizer, (str, Path)):
        raise TokenStoreError(
            f"expected a tokenizer folder holding one of {list(TOKENIZER_FILES)} but found none in {str(folder)!r}."
        )
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(getattr(tokenizer, "special_tokens_map", {}).items())
    digest.update(json.dumps([type(tokenizer).__name__, vocab, special], default=str).encode())
    return digest.hexdigest()


def sample_item(dataset: Dataset, index: int) -> Mapping[str, Tensor]:
    """Sample ``index`` as the teacher labels it (the first epoch's view of a dataset with ``sample(i, epoch)``)."""
    item = dataset.sample(index, 0) if hasattr(dataset, "sample") else dataset[index]
    if not isinstance(item, Mapping) or "input_ids" not in item:
        raise TokenStoreError(
            f"expected token samples (dicts with input_ids) in {type(dataset).__name__} but sample {index} is a "
            f"{type(item).__name__}; label a token dataset (kd_lightning.data.text.TextDataModule)."
        )
    return item


def corpus_digest(dataset: Dataset) -> str:
    """SHA-256 of every sample's token ids, in order (what the teacher reads)."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    for index in range(len(dataset)):
        ids = torch.as_tensor(sample_item(dataset, index)["input_ids"]).long().contiguous()
        digest.update(str(len(ids)).encode() + b":" + ids.numpy().tobytes())
    return digest.hexdigest()


def checksums(input_ids: Tensor, lengths: Tensor) -> Tensor:
    """``[B]`` int64 per-sample checksums (wrapping) of right-padded token ids ``[B, L]`` over their first ``lengths``
    tokens: the position-weighted sum of the ids, and the length."""
    positions = torch.arange(1, input_ids.shape[1] + 1)
    real = positions[None, :] <= lengths[:, None]
    return (input_ids.long().cpu() * positions * real).sum(1) * 1_000_003 + lengths


def with_defaults(key: dict[str, Any]) -> dict[str, Any]:
    """A stored key with the fields of stores written before outputs other than logits could be stored."""
    if "outputs" in key:
        return key
    return {**key, "outputs": [LOGITS], "kinds": {LOGITS: LOGIT_ROWS}, "widths": {}}


def _atomic_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


# ----------------------------------------------------------------- the store
class TokenStore:
    """A token store folder (see the module docstring): its key, its shards, and the rows of a batch.

    Args:
        path: the folder.
        shard_size: samples per shard (when writing).
    """

    def __init__(self, path: str | Path, shard_size: int = 256) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise TokenStoreError(f"expected shard_size to be an integer >= 1 but got {shard_size!r}.")
        self.path, self.shard_size = Path(path), shard_size
        self.key: dict[str, Any] | None = None
        self._offsets: np.ndarray | None = None
        self._shards: dict[int, dict[str, np.ndarray]] = {}

    # ----------------------------------------------------------------- state on disk
    @property
    def is_finished(self) -> bool:
        return (self.path / INDEX_FILE).is_file()

    def stored_key(self) -> dict[str, Any] | None:
        file = self.path / KEY_FILE
        return with_defaults(json.loads(file.read_text())) if file.is_file() else None

    def shard_path(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}"

    def shard_count(self, samples: int) -> int:
        return -(-samples // self.shard_size)

    def missing_shards(self) -> list[int]:
        """The shards not yet written (by the key's sample count)."""
        key = self.stored_key()
        if key is None:
            return []
        return [s for s in range(key["shards"]) if not (self.shard_path(s) / META_FILE).is_file()]

    def differences(self, key: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
        """The parts of the key (``KEY_PARTS``) in which ``key`` differs from ``stored``; parts ``key`` lacks are not
        compared."""
        return [name for name in KEY_PARTS if name in key and key[name] != stored.get(name)]

    def refuse(self, differing: list[str], fix: str) -> TokenStoreError:
        parts = ", ".join(KEY_PARTS[name] for name in differing)
        return TokenStoreError(f"the token store at {str(self.path)!r} differs in: {parts}; {fix}")

    # ----------------------------------------------------------------- writing
    def begin(self, key: Mapping[str, Any]) -> bool:
        """Create the store for ``key`` or resume it; ``False`` when a finished store of ``key`` is already there.

        Raises:
            TokenStoreError: the folder holds a store (finished or not) of another key.
        """
        if self.path.exists() and not self.path.is_dir():
            raise TokenStoreError(
                f"a token store is a folder but {str(self.path)!r} is a file; give --store (label_corpus's path) a new "
                f"folder, the existing file is left as it is."
            )
        stored = self.stored_key()
        if stored is not None:
            differing = self.differences(key, stored)
            if differing:
                raise self.refuse(
                    differing,
                    f"a store is never relabelled in place: label into another folder, or delete {str(self.path)!r} "
                    f"first to relabel.",
                )
            self.key, self.shard_size = stored, int(stored["shard_size"])  # a resume keeps the shards' size
            return not self.is_finished
        if self.path.exists() and any(".tmp-" not in file.name for file in self.path.iterdir()):
            raise TokenStoreError(
                f"expected an empty or missing folder for a new token store but {str(self.path)!r} holds other files; "
                f"label into another folder."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.key = {**key, "shards": self.shard_count(key["samples"]), "shard_size": self.shard_size}
        _atomic_json(self.path / KEY_FILE, self.key)
        return True

    def remove_partial_shards(self) -> None:
        """Delete the temporary folders of shards an interrupted labelling left half written."""
        for partial in self.path.glob("shard-*.tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)

    def write_shard(self, shard: int, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Write one shard atomically (a temporary folder renamed when complete); a shard already there is kept."""
        target = self.shard_path(shard)
        if (target / META_FILE).is_file():
            return
        temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        temporary.mkdir(parents=True)
        for name, array in arrays.items():
            np.save(temporary / f"{name}.npy", array)
        (temporary / META_FILE).write_text(json.dumps(dict(meta), sort_keys=True))
        try:
            os.replace(temporary, target)
        except OSError:  # written meanwhile by another process: both are the same rows
            shutil.rmtree(temporary, ignore_errors=True)

    def finish(self) -> None:
        """Write ``index.json`` (the key and each sample's shard, first row and length) once every shard is there."""
        key = self.stored_key()
        missing = self.missing_shards()
        if missing:
            raise TokenStoreError(
                f"the token store at {str(self.path)!r} misses shards {missing[:8]} after labelling; label again to "
                f"write them."
            )
        offsets, checks = [], []
        for shard in range(key["shards"]):
            meta = json.loads((self.shard_path(shard) / META_FILE).read_text())
            starts = np.concatenate([[0], np.cumsum(meta["lengths"])[:-1]]).astype(int)
            offsets += [[shard, int(start), int(length)] for start, length in zip(starts, meta["lengths"], strict=True)]
            checks += meta["checksums"]
        _atomic_json(self.path / INDEX_FILE, {"key": key, "offsets": offsets, "checksums": checks})

    # ----------------------------------------------------------------- reading
    def open(self) -> TokenStore:
        """Read the index (refusing a missing or interrupted store); the shards are memory-mapped when first read."""
        if not self.is_finished:
            key = self.stored_key()
            if key is None:
                raise TokenStoreError(
                    f"no token store at {str(self.path)!r}; label the corpus first: kd-lightning-label --config "
                    f"<the fit config> --store {self.path} (or kd_lightning.teachers.token_store.label_corpus)."
                )
            missing = self.missing_shards()
            raise TokenStoreError(
                f"the token store at {str(self.path)!r} is incomplete: {len(missing)} of {key['shards']} shards are "
                f"missing (an interrupted labelling); run the same labelling again: it writes only the missing shards."
            )
        index = json.loads((self.path / INDEX_FILE).read_text())
        self.key = with_defaults(index["key"])
        self.shard_size = int(self.key["shard_size"])
        self._offsets = np.asarray(index["offsets"], dtype=np.int64).reshape(-1, 3)
        self._checksums = np.asarray(index["checksums"], dtype=np.int64)
        self._shards = {}
        return self

    @property
    def vocab_size(self) -> int | None:
        """The teacher's vocabulary when the store holds language-model logits, else ``None``."""
        return None if self.key["vocab_size"] is None else int(self.key["vocab_size"])

    @property
    def outputs(self) -> list[str]:
        """The stored outputs, by the names the distillation terms read."""
        return list(self.key["outputs"])

    def bytes_per_token(self) -> tuple[int, int]:
        """``(bytes per stored token, bytes per stored sample)`` of this store's arrays (the format's formula)."""
        value = np.dtype(VALUE_DTYPES[self.key["dtype"]]).itemsize
        per_token = per_sample = 0
        for name in self.outputs:
            kind = self.key["kinds"][name]
            if kind == LOGIT_ROWS:
                per_token += bytes_per_token(self.vocab_size, self.key["top_k"], self.key["dtype"])
            elif kind == STATES:
                per_token += self.key["widths"][name] * value
            else:
                per_sample += self.key["widths"][name] * 4
        return per_token, per_sample

    @property
    def samples(self) -> int:
        return int(self.key["samples"])

    @property
    def tokens(self) -> int:
        """The stored tokens (rows), over every sample."""
        return int(self._offsets[:, 2].sum())

    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        arrays = self._shards.get(shard)
        if arrays is None:
            folder = self.shard_path(shard)
            arrays = {f.stem: np.load(f, mmap_mode="r") for f in sorted(folder.glob("*.npy"))}
            self._shards[shard] = arrays
        return arrays

    def _padded(self, index: Sequence[int], length: int, array: str, width: tuple[int, ...], dtype: Any) -> Tensor:
        """Stored array ``array`` of samples ``index`` as ``[B, length, *width]``: each sample's rows first, zeros
        after (padding positions, never read by the losses)."""
        padded = np.zeros((len(index), length, *width), dtype=dtype)
        for row, sample in enumerate(index):
            shard, start, count = (int(v) for v in self._offsets[sample])
            stop = start + min(count, length)
            padded[row, : stop - start] = self._shard(shard)[array][start:stop]
        return torch.from_numpy(padded)

    def rows(self, index: Sequence[int], length: int) -> tuple[Tensor, Tensor, Tensor]:
        """``values [B, length, k]``, ``indices [B, length, k]`` (int32) and ``logsumexp [B, length]`` of samples
        ``index``, each sample's rows first and zeros after (padding positions, never read by the losses)."""
        key = self.key
        width = key["vocab_size"] if key["top_k"] is None else key["top_k"]
        values = self._padded(index, length, "values", (width,), VALUE_DTYPES[key["dtype"]])
        lse = self._padded(index, length, "logsumexp", (), np.float32)
        if key["top_k"] is None:
            ids = torch.arange(width, dtype=torch.int32).expand(len(index), length, width)
        else:
            ids = self._padded(index, length, "indices", (width,), np.int32)
        return values, ids, lse

    def read(self, index: Sequence[int], length: int, names: Sequence[str]) -> dict[str, Tensor | SparseLogits]:
        """The stored outputs ``names`` of samples ``index`` padded to ``length`` positions (zeros after each sample's
        rows: padding positions, never read by the losses): logits as :class:`SparseLogits` (``missing_mass``
        "tail"; the caller sets its policy), states ``[B, length, D]`` and pooled vectors ``[B, H]``, float32."""
        read: dict[str, Tensor | SparseLogits] = {}
        for name in names:
            kind = self.key["kinds"][name]
            if kind == LOGIT_ROWS:
                read[name] = SparseLogits(*self.rows(index, length), self.vocab_size)
            elif kind == STATES:
                array, width = f"states-{self.outputs.index(name)}", self.key["widths"][name]
                read[name] = self._padded(index, length, array, (width,), np.float32)
            else:
                vectors = np.stack([self._shard(s)[SAMPLE_VECTORS][i] for s, i in self._sample_positions(index)])
                read[name] = torch.from_numpy(vectors.astype(np.float32))
        return read

    def _sample_positions(self, index: Sequence[int]) -> list[tuple[int, int]]:
        """``(shard, position in the shard)`` of each sample."""
        return [(int(i) // self.shard_size, int(i) % self.shard_size) for i in index]

    def check_batch(self, index: Tensor, input_ids: Tensor, lengths: Tensor) -> None:
        """Raise unless the batch's token ids are those the store was labelled on (per-sample checksums)."""
        index = index.long().cpu()
        if int(index.max()) >= len(self._checksums) or int(index.min()) < 0:
            raise TokenStoreError(
                f"expected sample indices below {len(self._checksums)} (the samples of the token store at "
                f"{str(self.path)!r}) but got {int(index.max())}; train on the corpus that was labelled."
            )
        stored = torch.from_numpy(self._checksums[index.numpy()])
        bad = (stored != checksums(input_ids, lengths.cpu())).nonzero().flatten()
        if len(bad):
            raise TokenStoreError(
                f"the token ids of samples {index[bad][:8].tolist()} differ from those the token store at "
                f"{str(self.path)!r} was labelled on; train on the labelled corpus (same data, split and masks), "
                f"or label this one."
            )


# ----------------------------------------------------------------- labelling
class _Labeller(L.LightningModule):
    """Runs the teacher over the missing shards of a store, this process's share, under the Trainer's processes."""

    def __init__(self, network: nn.Module, store: TokenStore, dataset: Dataset, batch_size: int) -> None:
        super().__init__()
        self.network, self.store, self.dataset, self.batch_size = network, store, dataset, batch_size
        self.tap: FeatureTap | None = None

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Shards(self), batch_size=None)

    def on_predict_start(self) -> None:
        self.tap = FeatureTap(self.network, self.store.outputs, role="teacher")
        if self.trainer.global_rank == 0:
            self.store.remove_partial_shards()
        self.trainer.strategy.barrier("token_store_partial_removed")

    def predict_step(self, shard: int, batch_idx: int = 0) -> None:
        """Label one shard: its samples in batches of similar lengths (little padding), stored in sample order.

        A SIGTERM (a preempted job) stops the labelling between shards: the shards written are kept, and labelling
        again resumes."""
        if getattr(self.trainer, "received_sigterm", False):
            raise SIGTERMException
        key, samples = self.store.key, len(self.dataset)
        first, stop = shard * self.store.shard_size, min((shard + 1) * self.store.shard_size, samples)
        ids = {i: torch.as_tensor(sample_item(self.dataset, i)["input_ids"]).long() for i in range(first, stop)}
        by_length = sorted(ids, key=lambda i: len(ids[i]))
        per_sample: dict[int, dict[str, np.ndarray]] = {}
        for start in range(0, len(by_length), self.batch_size):
            chosen = by_length[start : start + self.batch_size]
            count = torch.tensor([len(ids[i]) for i in chosen])
            input_ids = pad_sequence([ids[i] for i in chosen], batch_first=True, padding_value=0)
            mask = (torch.arange(input_ids.shape[1])[None, :] < count[:, None]).long()
            outputs = self.tap(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
            for position, name in enumerate(self.store.outputs):
                kind, output = key["kinds"][name], outputs[name].detach().float().cpu()
                for row, sample in enumerate(chosen):
                    arrays = _stored_rows(kind, output[row], int(count[row]), key, position)
                    per_sample.setdefault(sample, {}).update(arrays)
        order = list(range(first, stop))
        arrays = {
            name: (np.stack if name == SAMPLE_VECTORS else np.concatenate)([per_sample[i][name] for i in order])
            for name in per_sample[first]
        }
        lengths = [len(ids[i]) for i in order]
        sums = [int(checksums(ids[i][None], torch.tensor([len(ids[i])]))) for i in order]
        self.store.write_shard(shard, arrays, {"first": first, "lengths": lengths, "checksums": sums})

    def on_predict_end(self) -> None:
        self.tap.remove()
        self.trainer.strategy.barrier("token_store_shards_written")
        if self.trainer.global_rank == 0:
            self.store.finish()
        self.trainer.strategy.barrier("token_store_finished")


def _stored_rows(kind: str, output: Tensor, length: int, key: Mapping[str, Any], position: int) -> dict[str, Any]:
    """The arrays one sample adds to a shard for one output (float32 ``output`` of the sample: ``[L, V]``,
    ``[L, D]`` or ``[H]``), by the output's kind."""
    dtype = VALUE_DTYPES[key["dtype"]]
    if kind == SAMPLE_VECTORS:
        return {SAMPLE_VECTORS: output.numpy()}
    real = output[:length]
    if kind == STATES:
        return {f"states-{position}": real.numpy().astype(dtype)}
    rows = {"logsumexp": real.logsumexp(-1).numpy()}
    if key["top_k"] is None:
        return {"values": real.numpy().astype(dtype), **rows}
    top = real.topk(key["top_k"], dim=-1)
    return {
        "values": top.values.numpy().astype(dtype),
        "indices": top.indices.numpy().astype(index_dtype(key["vocab_size"])),
        **rows,
    }


class _Shards(IterableDataset):
    """The missing shards of this process (``shard % world_size == rank``), read when iterated. Iterable, so the
    Trainer leaves it unsplit (each process already holds its own share)."""

    def __init__(self, labeller: _Labeller) -> None:
        self.labeller = labeller

    def __iter__(self) -> Iterator[int]:
        trainer = self.labeller.trainer
        yield from (s for s in self.labeller.store.missing_shards() if s % trainer.world_size == trainer.global_rank)


def output_kinds(network: nn.Module, dataset: Dataset, outputs: Sequence[str]) -> tuple[dict, dict, int | None]:
    """``(kinds, widths, vocab_size)`` of the outputs to store, from one teacher forward pass on sample 0: token
    logits of a language model (``vocab_size`` is their width), per-token states ``[L, D]``, pooled vectors ``[H]``."""
    ids = torch.as_tensor(sample_item(dataset, 0)["input_ids"]).long()[None].to(_device(network))
    with FeatureTap(network, outputs, role="teacher") as tap, torch.no_grad():
        probe = tap(input_ids=ids, attention_mask=torch.ones_like(ids))
        output_kind = tap.output_kind
    kinds, widths, vocab_size = {}, {}, None
    for name in outputs:
        value = probe[name]
        if name == POOLED:
            kinds[name], widths[name] = SAMPLE_VECTORS, int(value.shape[-1])
        elif value.ndim != 3 or value.shape[:2] != ids.shape:
            raise TokenStoreError(
                f"expected the teacher's output {name!r} to be per token [B, L, D] but it has shape "
                f"{tuple(value.shape)} for input_ids of shape {tuple(ids.shape)}; store 'logits', 'pooled' or "
                f"transformer layers (encoder.layer.<i>, transformer.h.<i>)."
            )
        elif name == LOGITS and output_kind == LOGITS:
            kinds[name], vocab_size = LOGIT_ROWS, int(value.shape[-1])
        else:
            kinds[name], widths[name] = STATES, int(value.shape[-1])
    return kinds, widths, vocab_size


def training_split(data: Any) -> Dataset:
    """The training dataset of a datamodule (set up for ``fit``), or ``data`` itself when it is a dataset."""
    if isinstance(data, L.LightningDataModule):
        data.setup("fit")
        dataset = getattr(data.train_dataloader(), "dataset", None)
        if dataset is None:
            raise TokenStoreError(f"expected {type(data).__name__}.train_dataloader() to have a dataset.")
        return dataset
    return data


def label_corpus(
    teacher: nn.Module,
    data: Any,
    path: str | Path,
    top_k: int | None = None,
    dtype: str = "float16",
    tokenizer: Any = None,
    trainer: L.Trainer | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    shard_size: int = 256,
    outputs: Sequence[str] = (LOGITS,),
) -> TokenStore:
    """Label the training split of ``data`` with ``teacher`` into a token store at ``path``; returns it, finished.

    An interrupted labelling is resumed (only the missing shards are written); a finished store of the same key is
    returned as it is; a store of another key at ``path`` is refused. The teacher runs in eval mode under
    ``Trainer.predict`` (its processes, devices and precision): each process writes its own shards.

    Args:
        teacher: the teacher network (a Hugging Face masked- or causal-LM model), or a ``FrozenTeacher`` of one.
        data: a ``LightningDataModule`` (its training split; its ``tokenizer`` enters the key) or a token dataset.
        path: the store's folder.
        top_k: logits kept per token; ``None``: every logit (dense).
        dtype: the stored values, ``"float16"`` or ``"float32"`` (exact targets).
        tokenizer: the tokenizer (a folder or a loaded one) for the key; ``None``: ``data.tokenizer`` if any.
        trainer: the Trainer to run under; ``None``: ``L.Trainer(**trainer_kwargs)`` (CPU, one device, by default).
        trainer_kwargs: the arguments of that Trainer.
        batch_size: samples per teacher forward pass.
        shard_size: samples per shard.
        outputs: what to store, by the names the distillation terms read: ``"logits"`` (a language model's token
            logits, top-k or dense; an encoder's last hidden states), ``"pooled"`` (the sentence embedding) and
            ``named_modules()`` paths of the teacher (per-token states).
    """
    if dtype not in VALUE_DTYPES:
        raise TokenStoreError(f"expected dtype in {list(VALUE_DTYPES)} but got dtype={dtype!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise TokenStoreError(f"expected top_k None (dense) or an integer >= 1 but got top_k={top_k!r}.")
    if isinstance(outputs, str) or not outputs or len(set(outputs)) != len(outputs):
        raise TokenStoreError(
            f"expected outputs to be a non-empty list of distinct output names (logits, pooled, layer paths) but got "
            f"{outputs!r}."
        )
    network = network_of(teacher).eval().requires_grad_(False)
    dataset = training_split(data)
    tokenizer = getattr(data, "tokenizer", None) if tokenizer is None else tokenizer
    kinds, widths, vocab_size = output_kinds(network, dataset, list(outputs))
    if top_k is not None and vocab_size is None:
        raise TokenStoreError(
            f"top_k={top_k} keeps the largest token logits, but the outputs to store {list(outputs)} hold no "
            f"language-model logits ({type(network).__name__} returns hidden states); drop top_k (states are stored "
            f"whole)."
        )
    if top_k is not None and top_k > vocab_size:
        raise TokenStoreError(f"expected top_k <= the teacher's vocabulary ({vocab_size}) but got top_k={top_k}.")
    key = {
        "format": FORMAT,
        "teacher": teacher_identity(network),
        "tokenizer": tokenizer_digest(tokenizer),
        "corpus": corpus_digest(dataset),
        "top_k": top_k,
        "dtype": dtype,
        "vocab_size": vocab_size,
        "samples": len(dataset),
        "outputs": list(outputs),
        "kinds": kinds,
        "widths": widths,
    }
    store = TokenStore(path, shard_size)
    if store.begin(key):
        kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
        trainer = trainer if trainer is not None else L.Trainer(**{**kwargs, **(trainer_kwargs or {})})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="predict returned None")  # the shards are the output
            trainer.predict(_Labeller(network, store, dataset, batch_size), return_predictions=False)
    return store.open()


def _device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# ----------------------------------------------------------------- the teacher source
class TokenStoreTeacher(TeacherSource):
    """A language-model teacher read from its token store (:func:`label_corpus`): the teacher network is never built.

    Training steps read the stored outputs the terms name for the batch's samples (``Batch.index``: set
    ``return_index: true`` on the datamodule): top-k logits as :class:`~kd_lightning.losses.token.SparseLogits`, which
    every token-level logit loss accepts, per-token states as ``[B, L, D]`` and ``pooled`` as ``[B, H]`` (float32).
    A term reading an output the store does not hold is refused when the fit starts, with the outputs it holds.
    When the fit starts the store is checked against the training split (its token ids), the datamodule's tokenizer
    and, when ``teacher`` is given, the teacher's weights; each batch against the per-sample checksums. A dataset that
    draws its masks per epoch (``TextDataModule`` with ``task: mlm``) is set to yield the labelled (first) epoch's
    masks in every epoch. Validation and test log no teacher metrics (there is no live teacher).

    Args:
        path: the store's folder.
        teacher: optional, the teacher network the store must have been labelled with (only checked, never run).
        missing_mass: how the losses treat the mass outside the top k, ``"tail"`` or ``"renormalise"``
            (:class:`~kd_lightning.losses.token.SparseLogits`).

    Example (YAML, as the model's ``teacher``)::

        teacher:
          class_path: kd_lightning.teachers.TokenStoreTeacher
          init_args: {path: stores/gpt2_tiny, missing_mass: tail}
    """

    kind = EXTERNAL
    in_checkpoint = False
    scores_new_inputs = False

    def __init__(self, path: str | Path, teacher: nn.Module | None = None, missing_mass: str = "tail") -> None:
        super().__init__()
        if missing_mass not in MISSING_MASS:
            raise TokenStoreError(f"expected missing_mass in {list(MISSING_MASS)} but got {missing_mass!r}.")
        self.store = TokenStore(path)
        self.missing_mass = missing_mass
        self._expected = None if teacher is None else teacher_identity(teacher)
        self._prefetched: dict[str | None, tuple[int, Outputs]] = {}
        self.layers: list[str] = [LOGITS]

    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        self.layers = list(layers)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "store": None if self.store.key is None else self.store.key["teacher"]}

    def describe(self) -> str:
        return f"teacher outputs stored in {self.store.path}"

    def files_read(self) -> dict[str, str]:
        return {str(self.store.path): "the teacher's token store"}

    def setup(self, module: Any, stage: str) -> None:
        """Before a fit: open the store and check it against the training split, tokenizer and teacher."""
        if stage != "fit":
            return
        self.store.open()
        dataset = getattr(module.training_dataloader(), "dataset", None)
        if dataset is None:
            raise TokenStoreError("expected a training loader with a dataset to read a token store for.")
        if hasattr(dataset, "views"):
            dataset.views = 1  # every epoch yields the labelled inputs (the first epoch's masks)
        datamodule = getattr(module.trainer, "datamodule", None)
        expected = {"corpus": corpus_digest(dataset)}
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            expected["tokenizer"] = tokenizer_digest(tokenizer)
        if self._expected is not None:
            expected["teacher"] = self._expected
        differing = self.store.differences(expected, self.store.key)
        if differing:
            raise self.store.refuse(
                differing, "train on what was labelled, or label this setup into a new folder (kd-lightning-label)."
            )
        self.check_outputs()

    def check_outputs(self) -> None:
        """Raise unless the store holds every teacher output the terms read."""
        missing = [name for name in self.layers if name not in self.store.outputs]
        if missing:
            raise TokenStoreError(
                f"the distillation terms read the teacher's {missing} but the token store at {str(self.store.path)!r} "
                f"holds {self.store.outputs}; label a store of these outputs into a new folder (kd-lightning-label "
                f"--outputs {' '.join(self.layers)}), or distil the outputs it holds."
            )

    def check(self, module: Any, batch: Batch) -> None:
        if batch.index is None or not batch.is_sequence:
            raise TokenStoreError(
                "a token store is read by sample index but the training batches have no index; set the "
                "datamodule's return_index: true (TextDataModule) or give token dicts with an 'index'."
            )

    def before_batch_transfer(self, batch: Any) -> None:
        """Read each part's stored rows on the host, from its indices there (the step then only copies them)."""
        self._prefetched = {}
        if self.store.key is None or not isinstance(batch, Mapping):
            return
        for name, part in parse_parts(batch).items():
            if isinstance(part.index, Tensor) and part.index.device.type == "cpu" and part.is_sequence:
                self._prefetched[name] = (part.size, self._read(part))

    def _read(self, batch: Batch) -> Outputs:
        size, length = batch.sequence_shape
        mask = batch.attention_mask
        lengths = mask.sum(1).cpu() if mask is not None else torch.full((size,), length)
        input_ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
        if input_ids is not None:
            self.store.check_batch(batch.index, input_ids.cpu(), lengths)
        read = self.store.read(batch.index.long().cpu().tolist(), length, self.layers)
        return {
            name: replace(value, missing_mass=self.missing_mass) if isinstance(value, SparseLogits) else value
            for name, value in read.items()
        }

    def outputs(self, batch: Batch) -> Outputs:
        batch = Batch.parse(batch)
        size, read = self._prefetched.pop(batch.part, (None, None))
        if read is None or size != batch.size:
            if self.store.key is None:
                self.store.open()
                self.check_outputs()
            self.check(None, batch)
            read = self._read(batch)
        return {name: value.to(batch.device, non_blocking=True) for name, value in read.items()}

    def eval_logits(self, batch: Batch) -> Tensor | None:
        return None
