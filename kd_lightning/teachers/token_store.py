"""A language-model teacher's next-token distributions over a token corpus, labelled once and read in training.

Offline distillation of a language model spends most of its step in the teacher. :func:`label_corpus` runs the
teacher once over the training split and writes, per real token of every sample, the ``top_k`` largest logits
(float16, or float32 for exact targets), their token ids (``uint16`` when the vocabulary fits, else ``int32``) and the
log-normaliser of the full logits (``logsumexp``, float32), so the probability mass outside the top k is known;
``top_k=None`` stores every logit (dense, in vocabulary order, no ids). :class:`TokenStoreTeacher` reads it back as
:class:`~kd_lightning.losses.token.SparseLogits` by ``Batch.index``: training never builds the teacher network.

**Layout** (a folder)::

    key.json                 what the store is of (below); written first
    shard-00000/             samples [0, shard_size): values.npy [T, k] (or [T, V] dense), indices.npy [T, k]
                             (top-k only), logsumexp.npy [T] (T = the shard's tokens), meta.json
    ...
    index.json               written last, once every shard is there: the key and, per sample, its shard, first row
                             and length

A shard is written into a temporary folder and renamed when complete, so a shard folder is always whole; a store
without ``index.json`` is an interrupted labelling, and labelling it again writes only the missing shards. Each
process of a distributed run writes the shards ``s`` with ``s % world_size == rank``: shards never depend on the
number of processes.

**The key** names the teacher (class, a SHA-256 of its weights, its configuration), the tokenizer (a SHA-256 of its
files), the corpus (a SHA-256 of every sample's token ids), ``top_k`` and the value dtype. Labelling into a folder
holding a store with another key is refused (a store is never replaced silently); a :class:`TokenStoreTeacher` opened
on another corpus, tokenizer or (when given one) teacher is refused, with the part that differs. Every training batch
is also checked against a per-sample checksum of its token ids.

Why numpy memory maps and not litdata's ``optimize``/``StreamingDataset``: the rows are read by sample index, in the
order of the student's own loader (whose seeded order and mid-epoch resume stay as they are), from a local or shared
file system; ``.npy`` shards memory-map with no extra dependency and read exactly the rows a batch needs. litdata is
the tool to stream such shards from object storage, and its chunks could hold the same arrays.

Bytes per stored token: ``k * (value bytes + index bytes) + 4`` for top-k, ``V * value bytes + 4`` dense
(:func:`bytes_per_token`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kd_lightning.core.batch import Batch, parse_parts
from kd_lightning.core.taps import LOGITS
from kd_lightning.files.local_dirs import TOKENIZER_FILES
from kd_lightning.files.weights import state_digest
from kd_lightning.losses.token import MISSING_MASS, SparseLogits
from kd_lightning.teachers.base import EXTERNAL, Outputs, TeacherSource
from kd_lightning.teachers.frozen import FrozenTeacher

FORMAT = "kd_lightning.TokenStore/1"
VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}
KEY_FILE, INDEX_FILE, META_FILE = "key.json", "index.json", "meta.json"
KEY_PARTS = {
    "teacher": "teacher (its class, weights or configuration)",
    "tokenizer": "tokenizer (its files)",
    "corpus": "corpus (the token ids of the training samples)",
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
        return json.loads(file.read_text()) if file.is_file() else None

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
        self.key = index["key"]
        self._offsets = np.asarray(index["offsets"], dtype=np.int64).reshape(-1, 3)
        self._checksums = np.asarray(index["checksums"], dtype=np.int64)
        self._shards = {}
        return self

    @property
    def vocab_size(self) -> int:
        return int(self.key["vocab_size"])

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

    def rows(self, index: Sequence[int], length: int) -> tuple[Tensor, Tensor, Tensor]:
        """``values [B, length, k]``, ``indices [B, length, k]`` (int32) and ``logsumexp [B, length]`` of samples
        ``index``, each sample's rows first and zeros after (padding positions, never read by the losses)."""
        key = self.key
        width = key["vocab_size"] if key["top_k"] is None else key["top_k"]
        values = np.zeros((len(index), length, width), dtype=VALUE_DTYPES[key["dtype"]])
        lse = np.zeros((len(index), length), dtype=np.float32)
        indices = None if key["top_k"] is None else np.zeros((len(index), length, width), dtype=np.int32)
        for row, sample in enumerate(index):
            shard, start, count = (int(v) for v in self._offsets[sample])
            arrays, rows = self._shard(shard), slice(start, start + min(count, length))
            values[row, : rows.stop - start] = arrays["values"][rows]
            lse[row, : rows.stop - start] = arrays["logsumexp"][rows]
            if indices is not None:
                indices[row, : rows.stop - start] = arrays["indices"][rows]
        if indices is None:
            ids = torch.arange(width, dtype=torch.int32).expand(len(index), length, width)
        else:
            ids = torch.from_numpy(indices)
        return torch.from_numpy(values), ids, torch.from_numpy(lse)

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

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Shards(self), batch_size=None)

    def on_predict_start(self) -> None:
        if self.trainer.global_rank == 0:
            self.store.remove_partial_shards()
        self.trainer.strategy.barrier("token_store_partial_removed")

    def predict_step(self, shard: int, batch_idx: int = 0) -> None:
        key, samples = self.store.key, len(self.dataset)
        first, stop = shard * self.store.shard_size, min((shard + 1) * self.store.shard_size, samples)
        parts: dict[str, list[np.ndarray]] = {"values": [], "indices": [], "logsumexp": []}
        lengths, sums = [], []
        for start in range(first, stop, self.batch_size):
            ids = [
                torch.as_tensor(sample_item(self.dataset, i)["input_ids"]).long()
                for i in range(start, min(start + self.batch_size, stop))
            ]
            count = torch.tensor([len(t) for t in ids])
            input_ids = pad_sequence(ids, batch_first=True, padding_value=0)
            mask = (torch.arange(input_ids.shape[1])[None, :] < count[:, None]).long()
            logits = _logits(self.network(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)))
            logits = logits.detach().float().cpu()
            for row, length in enumerate(count.tolist()):
                real = logits[row, :length]
                if key["top_k"] is None:
                    parts["values"].append(real.numpy().astype(VALUE_DTYPES[key["dtype"]]))
                else:
                    top = real.topk(key["top_k"], dim=-1)
                    parts["values"].append(top.values.numpy().astype(VALUE_DTYPES[key["dtype"]]))
                    parts["indices"].append(top.indices.numpy().astype(index_dtype(key["vocab_size"])))
                parts["logsumexp"].append(real.logsumexp(-1).numpy())
            lengths += count.tolist()
            sums += checksums(input_ids, count).tolist()
        arrays = {name: np.concatenate(chunks) for name, chunks in parts.items() if chunks}
        self.store.write_shard(shard, arrays, {"first": first, "lengths": lengths, "checksums": sums})

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("token_store_shards_written")
        if self.trainer.global_rank == 0:
            self.store.finish()
        self.trainer.strategy.barrier("token_store_finished")


class _Shards(IterableDataset):
    """The missing shards of this process (``shard % world_size == rank``), read when iterated. Iterable, so the
    Trainer leaves it unsplit (each process already holds its own share)."""

    def __init__(self, labeller: _Labeller) -> None:
        self.labeller = labeller

    def __iter__(self) -> Iterator[int]:
        trainer = self.labeller.trainer
        yield from (s for s in self.labeller.store.missing_shards() if s % trainer.world_size == trainer.global_rank)


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise TokenStoreError(
            f"expected the teacher to return token logits [B, L, V] (a tensor or an output with .logits) but got "
            f"{type(output).__name__}; label with a masked- or causal-LM model."
        )
    return logits


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
    """
    if dtype not in VALUE_DTYPES:
        raise TokenStoreError(f"expected dtype in {list(VALUE_DTYPES)} but got dtype={dtype!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise TokenStoreError(f"expected top_k None (dense) or an integer >= 1 but got top_k={top_k!r}.")
    network = network_of(teacher).eval().requires_grad_(False)
    dataset = training_split(data)
    tokenizer = getattr(data, "tokenizer", None) if tokenizer is None else tokenizer
    with torch.no_grad():
        ids = torch.as_tensor(sample_item(dataset, 0)["input_ids"]).long()[None]
        vocab_size = _logits(network(input_ids=ids.to(_device(network)))).shape[-1]
    if top_k is not None and top_k > vocab_size:
        raise TokenStoreError(f"expected top_k <= the teacher's vocabulary ({vocab_size}) but got top_k={top_k}.")
    key = {
        "format": FORMAT,
        "teacher": teacher_identity(network),
        "tokenizer": tokenizer_digest(tokenizer),
        "corpus": corpus_digest(dataset),
        "top_k": top_k,
        "dtype": dtype,
        "vocab_size": int(vocab_size),
        "samples": len(dataset),
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

    Training steps read the stored top-k logits of the batch's samples (``Batch.index``: set ``return_index: true``
    on the datamodule) as :class:`~kd_lightning.losses.token.SparseLogits`, which every token-level logit loss accepts.
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

    def __init__(self, path: str | Path, teacher: nn.Module | None = None, missing_mass: str = "tail") -> None:
        super().__init__()
        if missing_mass not in MISSING_MASS:
            raise TokenStoreError(f"expected missing_mass in {list(MISSING_MASS)} but got {missing_mass!r}.")
        self.store = TokenStore(path)
        self.missing_mass = missing_mass
        self._expected = None if teacher is None else teacher_identity(teacher)
        self._prefetched: dict[str | None, tuple[int, SparseLogits]] = {}

    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        features = [name for name in layers if name != LOGITS]
        if features:
            raise TokenStoreError(
                f"the distillation terms read teacher features {features} but a token store holds logits only; "
                f"distil logits from it, or use a live teacher for feature terms."
            )

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

    def _read(self, batch: Batch) -> SparseLogits:
        size, length = batch.sequence_shape
        mask = batch.attention_mask
        lengths = mask.sum(1).cpu() if mask is not None else torch.full((size,), length)
        input_ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
        if input_ids is not None:
            self.store.check_batch(batch.index, input_ids.cpu(), lengths)
        values, indices, lse = self.store.rows(batch.index.long().cpu().tolist(), length)
        return SparseLogits(values, indices, lse, self.store.vocab_size, self.missing_mass)

    def outputs(self, batch: Batch) -> Outputs:
        batch = Batch.parse(batch)
        size, sparse = self._prefetched.pop(batch.part, (None, None))
        if sparse is None or size != batch.size:
            if self.store.key is None:
                self.store.open()
            self.check(None, batch)
            sparse = self._read(batch)
        return {LOGITS: sparse.to(batch.device, non_blocking=True)}

    def eval_logits(self, batch: Batch) -> Tensor | None:
        return None
