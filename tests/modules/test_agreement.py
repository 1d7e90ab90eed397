"""The checks of parts that must agree (``modules/_agreement.py``) and of the first batch against the networks
(``modules/_first_batch.py``), on crafted batches and tiny networks: the decision of the data's task, the kinds of
language models, position embeddings, first layers, output kinds and tokenizers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kd_lightning import DistillTerm, OfflineDistillation
from kd_lightning.core.batch import Batch
from kd_lightning.data.text import mask_tokens
from kd_lightning.losses import ForwardKLLoss, HiddenCosineLoss, KDLoss
from kd_lightning.models import DigitsCNN, DigitsMLP
from kd_lightning.models.text import model_from_config
from kd_lightning.modules import _agreement, _first_batch
from kd_lightning.modules._agreement import CAUSAL, MASKED, SHIFTED, label_task, language_model_kind

pytest.importorskip("transformers")

VOCAB = 40


def ids(rows: int = 4, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def batch(input_ids: torch.Tensor, labels: torch.Tensor | None, mask: torch.Tensor | None = None) -> Batch:
    inputs = {"input_ids": input_ids} | ({} if mask is None else {"attention_mask": mask})
    return Batch(inputs, labels)


def tiny(model_type: str, task: str = "auto", positions: int = 16) -> nn.Module:
    return model_from_config(model_type, task, VOCAB, hidden_size=8, num_layers=1, num_heads=2, max_positions=positions)


# ----------------------------------------------------------------- what the labels train
def test_labels_equal_to_the_inputs_are_causal_lm_labels_padding_aside():
    tokens = ids()
    mask = torch.ones_like(tokens)
    mask[0, 8:] = 0
    labels = tokens.masked_fill(mask == 0, -100)
    assert label_task(batch(tokens, labels, mask)) == CAUSAL
    assert label_task(batch(tokens, tokens.clone())) == CAUSAL


def test_bert_masking_gives_masked_lm_labels():
    tokens = ids(8, 32)
    special = torch.zeros_like(tokens, dtype=torch.bool)
    inputs, labels = mask_tokens(tokens, special, 3, VOCAB, generator=torch.Generator().manual_seed(0))
    assert label_task(batch(inputs, labels)) == MASKED


def test_labels_of_the_next_token_are_shifted_labels():
    tokens = ids()
    labels = torch.cat([tokens[:, 1:], torch.full((4, 1), -100)], dim=1)
    assert label_task(batch(tokens, labels)) == SHIFTED


@pytest.mark.parametrize(
    "case",
    ["no labels", "completion only", "token classes", "other shape", "all ignored", "two masked copies"],
)
def test_labels_that_do_not_tell_the_task_decide_nothing(case):
    tokens = ids()
    labels = {
        "no labels": None,
        "completion only": torch.where(torch.arange(12) >= 9, tokens, torch.full_like(tokens, -100)),
        "token classes": torch.randint(0, 3, tokens.shape, generator=torch.Generator().manual_seed(1)),
        "other shape": tokens[:, :6],
        "all ignored": torch.full_like(tokens, -100),
        "two masked copies": torch.where(torch.arange(12) == 3, tokens, torch.full_like(tokens, -100)),
    }[case]
    assert label_task(batch(tokens, labels)) is None


def test_image_batches_decide_nothing():
    assert label_task(Batch(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))) is None


# ----------------------------------------------------------------- what a language model predicts
def test_language_model_kinds():
    assert language_model_kind(tiny("gpt2")) == CAUSAL
    assert language_model_kind(tiny("bert")) == MASKED
    assert language_model_kind(tiny("bert", "causal_lm")) == CAUSAL  # BertLMHeadModel, is_decoder
    assert language_model_kind(tiny("bert", "base")) is None
    assert language_model_kind(DigitsMLP()) is None
    flagged = nn.Linear(2, 2)
    flagged.is_causal_lm = False
    assert language_model_kind(flagged) == MASKED


def test_a_trained_masked_lm_on_causal_labels_is_refused_and_a_frozen_one_is_not():
    tokens = ids()
    causal = batch(tokens, tokens.clone())
    with pytest.raises(ValueError, match=r"the student \(BertForMaskedLM\) is a masked language model.*task: mlm"):
        _agreement.check_data_task(causal, {"student": tiny("bert")})
    _agreement.check_data_task(causal, {"teacher": tiny("bert").requires_grad_(False), "student": tiny("gpt2")})


def test_a_causal_lm_on_masked_labels_is_refused():
    tokens = ids(8, 32)
    inputs, labels = mask_tokens(tokens, torch.zeros_like(tokens, dtype=torch.bool), 3, VOCAB)
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel\) is a causal language model.*masked-LM labels"):
        _agreement.check_data_task(batch(inputs, labels), {"student": tiny("gpt2")})


def test_shifted_labels_are_refused_for_either_kind():
    tokens = ids()
    shifted = batch(tokens, torch.cat([tokens[:, 1:], torch.full((4, 1), -100)], dim=1))
    for kind in ("gpt2", "bert"):
        with pytest.raises(ValueError, match=r"shifted by one.*labels equal to input_ids"):
            _agreement.check_data_task(shifted, {"student": tiny(kind)})


# ----------------------------------------------------------------- positions and first layers
def test_position_limits_of_learned_absolute_embeddings():
    assert _agreement.position_limit(tiny("gpt2", positions=24)) == (24, "config.max_position_embeddings=24")
    assert _agreement.position_limit(tiny("bert", positions=20))[0] == 20
    roberta_like = nn.Module()
    roberta_like.position_embeddings = nn.Embedding(514, 4, padding_idx=1)
    assert _agreement.position_limit(roberta_like) == (512, "position_embeddings: 514 positions")
    assert _agreement.position_limit(DigitsCNN(width=2)) is None


def test_sequences_beyond_the_positions_are_refused_before_the_model_runs():
    tokens = ids(2, 20)
    with pytest.raises(ValueError, match=r"sequences of 20 tokens.*for only 16 tokens.*max_length to at most 16"):
        _first_batch.check_positions(batch(tokens, None), {"student": tiny("gpt2")})
    _first_batch.check_positions(batch(tokens[:, :16], None), {"student": tiny("gpt2")})


def test_images_of_other_channels_than_the_first_convolution_are_refused():
    images = Batch(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"DigitsCNN\) takes 1-channel images.*stem.0.*3-channel images \[B, 3, 8, 8\]"
    ):
        _first_batch.check_channels(images, {"student": DigitsCNN(width=2)})
    _first_batch.check_channels(Batch(torch.zeros(2, 1, 8, 8)), {"student": DigitsCNN(width=2)})


def test_a_convolution_that_takes_the_channels_further_in_is_not_refused():
    odd = nn.Sequential()
    odd.add_module("side", nn.Conv2d(5, 4, 1))  # registered first, but not the stem
    odd.add_module("stem", nn.Conv2d(3, 5, 1))
    _first_batch.check_channels(Batch(torch.zeros(2, 3, 4, 4)), {"student": odd})


def test_a_linear_network_takes_its_input_size_flattened_or_per_row():
    with pytest.raises(ValueError, match=r"takes 64 input values.*\[B, 3, 32, 32\], 3,072 values.*in_features: 3072"):
        _first_batch.check_channels(Batch(torch.zeros(2, 3, 32, 32)), {"student": DigitsMLP()})
    _first_batch.check_channels(Batch(torch.zeros(2, 1, 8, 8)), {"student": DigitsMLP()})
    _first_batch.check_channels(Batch(torch.zeros(2, 3, 5, 64)), {"student": DigitsMLP()})


def test_labels_under_another_key_are_refused():
    tokens = ids()
    with pytest.raises(ValueError, match=r"the key 'label' is not read as labels.*rename the key to 'labels'"):
        _first_batch.check_batch({"input_ids": tokens, "label": torch.zeros(4, dtype=torch.long)})
    _first_batch.check_batch({"input_ids": tokens, "labels": tokens.clone(), "label": tokens.clone()})


# ----------------------------------------------------------------- the module's parts
def offline(student: nn.Module, teacher: nn.Module, *terms: DistillTerm) -> OfflineDistillation:
    return OfflineDistillation(
        student, teacher, terms=list(terms), ce_weight=0.0, num_classes=VOCAB, allow_untrained_teacher=True
    )


def ran(module: OfflineDistillation) -> dict[str, torch.Tensor]:
    """The student's outputs after both networks ran once (their taps then know their output kinds)."""
    inputs = Batch({"input_ids": ids(2, 8)})
    module.teacher.outputs(inputs)
    return module.student_outputs(inputs)


def test_a_token_logit_loss_between_a_causal_and_a_masked_lm_is_refused():
    module = offline(tiny("bert"), tiny("gpt2"), DistillTerm(ForwardKLLoss()))
    with pytest.raises(ValueError, match=r"ForwardKLLoss, model.init_args.terms\[0\].*causal LM.*masked LM"):
        _agreement.check_causality(module)
    _agreement.check_causality(
        offline(
            tiny("bert"),
            tiny("gpt2"),
            DistillTerm(HiddenCosineLoss(), student="bert.encoder.layer.0", teacher="transformer.h.0"),
        )
    )


def test_a_token_logit_loss_on_hidden_states_is_refused():
    module = offline(tiny("bert", "base"), tiny("bert"), DistillTerm(ForwardKLLoss()))
    with pytest.raises(ValueError, match=r"the student \(BertModel\) has no language-model head.*HiddenCosineLoss"):
        _agreement.check_output_kinds(module, ran(module))
    teacher_without_head = offline(tiny("gpt2"), tiny("gpt2", "base"), DistillTerm(ForwardKLLoss()))
    with pytest.raises(ValueError, match=r"the teacher \(GPT2Model\).*task: causal_lm"):
        _agreement.check_output_kinds(teacher_without_head, ran(teacher_without_head))


def test_a_classification_loss_on_token_logits_points_to_the_token_losses():
    module = offline(tiny("gpt2"), tiny("gpt2"), DistillTerm(KDLoss()))
    with pytest.raises(ValueError, match=r"KDLoss.*token logits \(2, 8, 40\).*ForwardKLLoss"):
        _agreement.check_output_kinds(module, ran(module))
    _agreement.check_output_kinds(offline(tiny("gpt2"), tiny("gpt2"), DistillTerm(ForwardKLLoss())), ran(module))


class Tokenizer:
    """A tokenizer's size and vocabulary, as the comparison reads them."""

    def __init__(self, vocabulary: dict[str, int], name: str = "mine") -> None:
        self.vocabulary, self.name_or_path = vocabulary, name

    def __len__(self) -> int:
        return len(self.vocabulary)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocabulary)


def test_vocabulary_differences_name_the_sizes_or_a_moved_token():
    words = {f"w{i}": i for i in range(6)}
    assert _agreement.vocabulary_difference(Tokenizer(words), Tokenizer(dict(words))) is None
    assert "has 6 tokens, the data's 3" in _agreement.vocabulary_difference(
        Tokenizer(words), Tokenizer({"a": 0, "b": 1, "c": 2})
    )
    moved = dict(words) | {"w1": 2, "w2": 1}
    assert "2 of them have other ids (e.g. 'w1': 1 in the model's, 2 in the data's)" in (
        _agreement.vocabulary_difference(Tokenizer(words), Tokenizer(moved))
    )


def test_a_model_directory_tokenizer_other_than_the_data_is_refused(monkeypatch):
    network = tiny("bert", "base")
    network.kd_lightning_tokenizer = "models/minilm"
    shipped = Tokenizer({f"w{i}": i for i in range(6)}, "models/minilm")
    monkeypatch.setattr(_agreement, "shipped_tokenizer", lambda directory: shipped)
    module = SimpleNamespace(
        networks=lambda: {"student": network},
        _trainer=SimpleNamespace(datamodule=SimpleNamespace(tokenizer=Tokenizer({"a": 0}, "bpe"))),
    )
    with pytest.raises(ValueError, match=r"tokenized by 'bpe'.*comes from 'models/minilm'.*tokenizer: 'models/minilm'"):
        _agreement.check_tokenizer(module)
    module._trainer.datamodule.tokenizer = Tokenizer(shipped.get_vocab(), "a copy")
    _agreement.check_tokenizer(module)
    module._trainer = None  # fitted with loaders, no datamodule
    _agreement.check_tokenizer(module)


def test_the_datamodule_max_length_beyond_the_positions_is_refused():
    datamodule = SimpleNamespace(hparams={"max_length": 64})
    module = SimpleNamespace(
        networks=lambda: {"student": tiny("gpt2")}, _trainer=SimpleNamespace(datamodule=datamodule)
    )
    with pytest.raises(ValueError, match=r"max_length=64 allows sequences of 64 tokens.*only 16 tokens"):
        _agreement.check_max_length(module)
    datamodule.hparams["max_length"] = 16
    _agreement.check_max_length(module)
