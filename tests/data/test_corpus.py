"""The ``python_docs`` corpus: cleaning rules, deduplication, the collecting process, the cache, a seeded split with no
evaluation unit (or a duplicate of one) in training, and ``TextDataModule`` on it.

The full corpus is built once, cold, into a temporary cache (13-30 s on a shared 2-core CPU); the other tests use small
inputs. The tests that start a Python process are marked ``slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import ROOT

from kd_lightning.data import corpus_docs
from kd_lightning.data.corpus import (
    CORPORA,
    UNITS,
    corpus_texts,
    python_help_corpus,
    split_indices,
    text_units,
)
from kd_lightning.data.corpus_docs import (
    clean_text,
    collect_in_child,
    deduplicate,
    is_prose,
    normal_form,
    python_docs_corpus,
)
from kd_lightning.data.text import TextDataModule

BPE = str(ROOT / "checkpoints" / "text" / "python_help_bpe")
slow = pytest.mark.slow
CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.)|::|```|^\s*\.\. ")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="module")
def docs(cache):
    return python_docs_corpus(cache_dir=cache, rebuild=True)


def exact_form(text: str) -> str:
    return " ".join(text.lower().split())


# ----------------------------------------------------------------- cleaning
DOCSTRING = """Compute the weighted mean of the values along an axis.

    The mean is taken over :attr:`dim` with the weights of :class:`~torch.Tensor` ``weight``; see
    `the guide <https://example.org/guide>`_ for the *details* [1]_.

    >>> weighted_mean(torch.ones(3), torch.ones(3))
    tensor(1.)
    ... continued output line that looks like prose.

    It is written like this::

        total = (values * weights).sum() / weights.sum()
        This indented literal line is code, not prose.

    .. code-block:: python

        Another indented line inside a directive body.

    .. note::
        The weights need not sum to one for this function.

    ```
    A fenced block line that would pass as a sentence.
    ```

    Parameters
    ----------
    values : Tensor, optional
        The values whose weighted mean is taken here.
    x_1, x_2 : int
        (N, C) -> (N,) | [0, 1] | {a: b} | x**2 + y**2 == z
    :param weight: The weight given to every single value.
    :type weight: Tensor

    Args:
        dim (int): The dimension that is reduced by the mean.

    Ünïcödé têxt thät ïs möstly nön-ÄSCÏÏ çhäräctérs hérè.
    Short line here.
    """


def test_clean_text_keeps_the_prose_and_drops_code_markup_and_parameter_tables():
    assert clean_text(DOCSTRING) == [
        ["Compute the weighted mean of the values along an axis."],
        ["The mean is taken over dim with the weights of Tensor weight; see the guide for the details."],
        ["The weights need not sum to one for this function."],
        ["The values whose weighted mean is taken here."],
        ["The weight given to every single value."],
        ["The dimension that is reduced by the mean."],
    ]


@pytest.mark.parametrize(
    ("sentence", "prose"),
    [
        ("Return the number of items in the container.", True),
        ("Return the number of items in the container", False),  # no final punctuation
        ("return the number of items in the container.", False),  # a fragment
        ("Too short here.", False),
        (">>> len(container) == 3 and container is not None.", False),
        ("See torch.nn.functional.cross_entropy, torch_utils.data_loader and os.path.join.", False),  # identifiers
        ("Shape is (N, C, H, W) -> (N, K) where K = C * H * W / 4 + 1.", False),  # symbols
        ("Ünïcödé têxt thät ïs möstly nön-ÄSCÏÏ çhäräctérs.", False),
        ("The caller's value isn't copied; it's shared (by reference) with the module.", True),
    ],
)
def test_is_prose(sentence, prose):
    assert is_prose(sentence) is prose


def test_deduplicate_drops_exact_and_near_duplicates_at_their_later_occurrences():
    inherited = "Return a copy of this object with the same state."
    documents = [
        [[inherited, "It shares nothing with the original object."]],
        [[inherited]],  # the same docstring inherited by another class: gone
        [["return  a copy of THIS object with the same state!"], ["A new sentence, seen once only."]],
        [["A 32-bit float is stored in four bytes here."], ["A 64-bit float is stored in four bytes here."]],
    ]
    assert deduplicate(documents) == [
        f"{inherited} It shares nothing with the original object.",
        "A new sentence, seen once only.",
        "A 32-bit float is stored in four bytes here.",
    ]


# ----------------------------------------------------------------- collection
@slow
def test_collection_is_deterministic_and_isolated():
    roots = ["fractions", "json", "tabnanny", "textwrap"]
    imported = "tabnanny" in sys.modules
    first, second = collect_in_child(roots, depth=2), collect_in_child(roots, depth=2)
    assert first == second and len(first) > 50
    assert deduplicate(map(clean_text, first)) == deduplicate(map(clean_text, second))
    assert ("tabnanny" in sys.modules) == imported  # imported in the child process only


@slow
def test_collection_skips_modules_that_fail_print_or_open_a_browser(tmp_path, monkeypatch):
    (tmp_path / "quiet_module.py").write_text('"""A quiet module whose docstring is collected."""\n')
    (tmp_path / "loud_module.py").write_text('"""A loud module."""\nprint("hello")\n')
    (tmp_path / "broken_module.py").write_text('"""A broken module."""\nraise RuntimeError("no")\n')
    (tmp_path / "web_module.py").write_text('"""A web module."""\nimport webbrowser\nwebbrowser.open("x")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    roots = ["broken_module", "loud_module", "quiet_module", "web_module", "antigravity", "this"]
    assert collect_in_child(roots, depth=1) == ["A quiet module whose docstring is collected."]


def test_a_failing_or_slow_collection_is_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(
        subprocess, "run", lambda *args, **kwargs: (_ for _ in ()).throw(subprocess.TimeoutExpired("python", 1))
    )
    with pytest.raises(RuntimeError, match=r"took more than 1 s"):
        collect_in_child(["json"], timeout=1)


# ----------------------------------------------------------------- the corpus
@slow
def test_python_docs_is_large_clean_english(docs):
    sentences, paragraphs = text_units(docs, "sentence"), text_units(docs, "paragraph")
    help_units = text_units(python_help_corpus(), "paragraph")
    # measured with Python 3.11.7, torch 2.14.1, lightning 2.6.6: 46,258 sentences, 34,485 paragraphs, 618k words
    assert len(sentences) >= 40_000 and len(paragraphs) >= 10 * len(help_units)
    assert sum(len(unit.split()) for unit in sentences) >= 500_000
    assert all(is_prose(sentence) for sentence in sentences)
    assert not [line for text in docs for line in text.splitlines() if CODE_LINE.search(line)]


@slow
@pytest.mark.parametrize("unit", UNITS)
def test_python_docs_has_no_duplicate_units(docs, unit):
    units = text_units(docs, unit)
    assert len({normal_form(text) for text in units}) == len({exact_form(text) for text in units}) == len(units)


@slow
@pytest.mark.parametrize(("unit", "seed"), [("sentence", 0), ("sentence", 7), ("paragraph", 0)])
def test_seeded_split_keeps_every_evaluation_unit_out_of_training(docs, unit, seed):
    units = text_units(docs, unit)
    parts = split_indices(len(units), 0.05, 0.05, seed)
    keys = {name: {normal_form(units[i]) for i in indices} for name, indices in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert split_indices(len(units), 0.05, 0.05, seed) == parts


@slow
def test_python_docs_is_cached_and_rebuilt_identically(docs, cache):
    path = corpus_docs.cache_file(cache)
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored == {"versions": corpus_docs.version_key(), "texts": docs}
    assert not [file for file in cache.iterdir() if file != path]  # no temporary file left
    assert python_docs_corpus(cache_dir=cache) == docs  # read back
    assert corpus_texts("python_docs") == docs  # the default cache: built by another process, or now


def test_an_unreadable_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_docs, "build_python_docs", lambda: ["A rebuilt text of the corpus."])
    corpus_docs.cache_file(tmp_path).write_text("{not json")
    assert python_docs_corpus(cache_dir=tmp_path) == ["A rebuilt text of the corpus."]
    assert python_docs_corpus(cache_dir=tmp_path) == ["A rebuilt text of the corpus."]  # now from the cache


@slow
def test_text_datamodule_sets_up_on_python_docs(docs):
    data = TextDataModule(BPE, texts=docs, unit="sentence", task="clm", max_length=16, batch_size=4, split_seed=3)
    data.setup("fit")
    sizes = {name: len(units) for name, units in data.units.items()}
    assert sum(sizes.values()) == len(text_units(docs, "sentence")) and sizes["val"] == sizes["test"] > 2000
    train = {normal_form(text) for text in data.units["train"]}
    assert not train & {normal_form(text) for text in data.units["val"] + data.units["test"]}
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16


@slow
@pytest.mark.skipif("python_docs" not in CORPORA, reason="TextDataModule does not accept corpus: python_docs here")
def test_text_datamodule_reads_python_docs_by_name(docs):
    data = TextDataModule(BPE, corpus="python_docs", unit="sentence", task="none", max_length=16, batch_size=4)
    data.setup("fit")
    assert sum(len(units) for units in data.units.values()) == len(text_units(docs, "sentence"))
