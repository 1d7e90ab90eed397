"""The token store: a tiny GPT-2 teacher labels packed token blocks once; students train from the store alone.

A store at ``top_k = V`` (dense, or top-k with ids) trains exactly as the live teacher; at ``top_k < V`` the loss
follows the documented missing-mass policies; a store of another teacher or corpus is refused; an interrupted
labelling is detected and resumed shard by shard.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import LossRecorder, fast_trainer

from kd_lightning import DistillTerm, OfflineDistillation
from kd_lightning.core.batch import Batch
from kd_lightning.losses import ForwardKLLoss
from kd_lightning.losses.token import SparseLogits, forward_kl_loss, reverse_kl_loss
from kd_lightning.teachers import TokenStore, TokenStoreError, TokenStoreTeacher, label_corpus
from kd_lightning.teachers.token_store import bytes_per_token

transformers = pytest.importorskip("transformers")
from kd_lightning.data.text import TokenCollator  # noqa: E402
from kd_lightning.models.text import model_from_config  # noqa: E402

VOCAB = 50
BPE = "checkpoints/text/python_help_bpe"
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def gpt2(width: int, seed: int) -> torch.nn.Module:
    config = {"vocab_size": VOCAB, "num_heads": 2, "max_positions": 32, "dropout": 0.0}
    return model_from_config("gpt2", "causal_lm", hidden_size=width, num_layers=2, seed=seed, **config)


class Blocks(torch.utils.data.Dataset):
    """Token blocks for a causal LM, with their index: packed (one length) or of several lengths (padded)."""

    def __init__(self, padded: bool = False, seed: int = 0, count: int = 16) -> None:
        generator = torch.Generator().manual_seed(seed)
        lengths = [12, 7, 10, 5] * (count // 4) if padded else [12] * count
        self.items = [torch.randint(5, VOCAB, (length,), generator=generator) for length in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.items[index]
        return {"input_ids": ids, "labels": ids.clone(), "index": torch.tensor(index)}


def loader(dataset: Blocks) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=TokenCollator(0))


def fit(tmp_path, student, teacher, dataset, steps: int = 3, temperature: float = 2.0):
    module = OfflineDistillation(
        student,
        teacher,
        terms=[DistillTerm(ForwardKLLoss(temperature=temperature))],
        ce_weight=1.0,
        num_classes=VOCAB,
        optimizer=SGD,
        **({} if isinstance(teacher, TokenStoreTeacher) else {"allow_untrained_teacher": True}),
    )
    record = LossRecorder()
    trainer = fast_trainer(
        tmp_path, max_steps=steps, limit_train_batches=steps, limit_val_batches=0, callbacks=[record]
    )
    trainer.fit(module, train_dataloaders=loader(dataset))
    return record.losses, module.student


@pytest.fixture(scope="module")
def teacher():
    """A random GPT-2 with confident predictions (logits' std about 4), so stored and live targets are told apart."""
    network = gpt2(24, 0)
    with torch.no_grad():
        network.transformer.ln_f.weight.mul_(40)
    return network


def label(teacher, dataset, path, **kwargs) -> TokenStore:
    return label_corpus(teacher, dataset, path, batch_size=3, **{"shard_size": 5, **kwargs})


def test_bytes_per_token():
    assert [bytes_per_token(4096, k) for k in (8, 32, 128, None)] == [36, 132, 516, 8196]
    assert [bytes_per_token(50257, k) for k in (8, 32, 128, None)] == [36, 132, 516, 100518]  # ids fit uint16
    assert bytes_per_token(128256, 8) == 52  # int32 ids
    assert bytes_per_token(4096, 8, "float32") == 52


@pytest.mark.parametrize("top_k", [None, VOCAB], ids=["dense", "top_k=V"])
def test_a_store_at_k_equal_v_trains_as_the_live_teacher(top_k, teacher, tmp_path, one_torch_thread):
    dataset = Blocks()
    store = label(teacher, dataset, tmp_path / "store", top_k=top_k, dtype="float32")
    assert store.key["top_k"] == top_k and store.samples == len(dataset)
    student = gpt2(16, 1)
    live_losses, live_student = fit(tmp_path, copy.deepcopy(student), teacher, dataset)
    store_losses, store_student = fit(tmp_path, copy.deepcopy(student), TokenStoreTeacher(store.path), dataset)
    assert len(live_losses) == 3
    torch.testing.assert_close(torch.tensor(store_losses), torch.tensor(live_losses), rtol=0, atol=1e-5)
    for (name, a), b in zip(live_student.state_dict().items(), store_student.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


def tail_reference(student, teacher, k, mask, temperature=1.0):
    """T**2 * forward KL over k + 1 buckets (the teacher's top k and the rest), per selected token, written out; at
    T != 1 the teacher's tempered normaliser counts the missing mass as V - k equal logits."""
    total, count, rest = torch.zeros((), dtype=torch.float64), 0, teacher.shape[-1] - k
    for b, t in mask.nonzero().tolist():
        z = teacher[b, t].double()
        values, top = z.topk(k)
        missing = 1 - (values - z.logsumexp(-1)).exp().sum()
        tail_logit = z.logsumexp(-1) + (missing / rest).log()
        normaliser = ((values / temperature).exp().sum() + rest * (tail_logit / temperature).exp()).log()
        p_top = (values / temperature - normaliser).exp()
        q_top = (student[b, t].double() / temperature).softmax(-1)[top]
        p_rest, q_rest = 1 - p_top.sum(), 1 - q_top.sum()
        total = total + (p_top * (p_top / q_top).log()).sum() + p_rest * (p_rest / q_rest).log()
        count += 1
    return temperature**2 * total / count


def renormalised_reference(student, teacher, k, mask):
    """KL(softmax of the teacher's top k || the student), the student over the whole vocabulary."""
    total, count = torch.zeros(()), 0
    for b, t in mask.nonzero().tolist():
        values, top = teacher[b, t].double().topk(k)
        p = values.softmax(-1)
        log_q = student[b, t].double().log_softmax(-1)[top]
        total = total + (p * (p.log() - log_q)).sum()
        count += 1
    return total / count


def test_top_k_below_v_follows_the_missing_mass_policies(teacher, tmp_path, one_torch_thread):
    dataset, k = Blocks(padded=True), 5
    store = label(teacher, dataset, tmp_path / "store", top_k=k, dtype="float32")
    assert store.key["top_k"] == k
    assert store._shard(0)["indices"].dtype.name == "uint16" and store._shard(0)["values"].shape[1] == k
    batch = TokenCollator(0)([dataset[i] for i in (2, 0, 1, 3)])  # padded, in another order
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    student = torch.randn_like(live)
    mask = batch["attention_mask"].bool()
    for policy, reference in (("tail", tail_reference), ("renormalise", renormalised_reference)):
        sparse = TokenStoreTeacher(store.path, missing_mass=policy).outputs(Batch.parse(batch))["logits"]
        assert isinstance(sparse, SparseLogits) and sparse.shape == live.shape
        got = forward_kl_loss(student, sparse, mask=mask, chunk_size=7)
        torch.testing.assert_close(got.double(), reference(student, live, k, mask), rtol=1e-5, atol=1e-5)
    # at T != 1 the tempered tail grows as a power of the missing mass: compared where float32 resolves that mass
    resolved = mask & (1 - live.double().softmax(-1).topk(k).values.sum(-1) > 1e-2)
    assert 0 < resolved.sum() < mask.sum()
    sparse = TokenStoreTeacher(store.path).outputs(Batch.parse(batch))["logits"]
    got = forward_kl_loss(student, sparse, mask=resolved, temperature=2.0)
    torch.testing.assert_close(got.double(), tail_reference(student, live, k, resolved, 2.0), rtol=1e-5, atol=1e-5)
    tail = TokenStoreTeacher(store.path).outputs(Batch.parse(batch))["logits"]
    assert torch.isfinite(reverse_kl_loss(student, tail, mask=mask))  # the tail policy keeps reverse KL finite
    losses, _ = fit(tmp_path, gpt2(16, 1), TokenStoreTeacher(store.path), dataset, steps=2, temperature=1.0)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_training_from_a_store_never_builds_the_teacher(teacher, tmp_path, one_torch_thread):
    dataset = Blocks()
    store = label(teacher, dataset, tmp_path / "store", top_k=8)
    student = gpt2(16, 1)
    refuse = mock.patch.object(transformers.GPT2LMHeadModel, "__init__", side_effect=RuntimeError("teacher built"))
    with refuse:
        with pytest.raises(RuntimeError, match="teacher built"):
            gpt2(24, 0)
        losses, _ = fit(tmp_path, student, TokenStoreTeacher(store.path), dataset, steps=2)
    assert len(losses) == 2


def test_a_foreign_store_is_refused(teacher, tmp_path, one_torch_thread):
    dataset = Blocks()
    path = tmp_path / "store"
    label(teacher, dataset, path, top_k=8)
    other = gpt2(24, 7)
    with pytest.raises(TokenStoreError, match="differs in: teacher .*another folder, or delete"):
        label(other, dataset, path, top_k=8)
    with pytest.raises(TokenStoreError, match="differs in: corpus"):
        label(teacher, Blocks(seed=1), path, top_k=8)
    with pytest.raises(TokenStoreError, match="differs in: top_k"):
        label(teacher, dataset, path, top_k=4)
    assert label(teacher, dataset, path, top_k=8).is_finished  # the same key: the finished store, untouched
    with pytest.raises(TokenStoreError, match="differs in: teacher"):
        fit(tmp_path, gpt2(16, 1), TokenStoreTeacher(path, teacher=other), dataset, steps=1)
    with pytest.raises(TokenStoreError, match="differs in: corpus"):
        fit(tmp_path, gpt2(16, 1), TokenStoreTeacher(path), Blocks(seed=1), steps=1)
    fit(tmp_path, gpt2(16, 1), TokenStoreTeacher(path, teacher=teacher), dataset, steps=1)  # the right teacher


def test_a_store_path_that_is_a_file_is_refused_and_the_file_kept(teacher, tmp_path):
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"weights")
    with pytest.raises(TokenStoreError, match="a token store is a folder but .* is a file"):
        label_corpus(teacher, Blocks(), weights)
    assert weights.read_bytes() == b"weights"


def test_an_interrupted_labelling_is_detected_and_resumed(teacher, tmp_path):
    dataset = Blocks(padded=True)
    complete = label(teacher, dataset, tmp_path / "complete", top_k=8)
    path = tmp_path / "store"
    shutil.copytree(complete.path, path)
    (path / "index.json").unlink()  # interrupted: two shards never written, one half written
    shutil.rmtree(path / "shard-00001")
    shutil.move(path / "shard-00003", path / "shard-00003.tmp-123")
    (path / "shard-00003.tmp-123" / "values.npy").unlink()
    with pytest.raises(TokenStoreError, match="incomplete: 2 of 4 shards are missing"):
        TokenStore(path).open()
    with pytest.raises(TokenStoreError, match="incomplete"):
        fit(tmp_path, gpt2(16, 1), TokenStoreTeacher(path), dataset, steps=1)
    kept = {name: (path / name / "values.npy").stat().st_mtime_ns for name in ("shard-00000", "shard-00002")}
    resumed = label(teacher, dataset, path, top_k=8, shard_size=3)  # the store's own shard size is kept
    assert {name: (path / name / "values.npy").stat().st_mtime_ns for name in kept} == kept  # not redone
    assert not list(path.glob("*.tmp-*"))
    assert json.loads((path / "index.json").read_text()) == json.loads((complete.path / "index.json").read_text())
    for shard in range(4):
        for name, array in complete._shard(shard).items():
            assert (resumed._shard(shard)[name] == array).all(), (shard, name)


def fit_config(tmp_path, teacher: dict) -> str:
    """A fit config of two tiny GPT-2 networks on a small text corpus (the repository's BPE tokenizer)."""
    texts = [f"def function_{i}(value):\n    return value * {i} + len(str(value)) - {i % 7}" for i in range(40)]

    def gpt2_config(width: int, seed: int) -> dict:
        init = {"model_type": "gpt2", "task": "causal_lm", "vocab_size": 4096, "hidden_size": width}
        init.update({"num_layers": 1, "num_heads": 2, "max_positions": 32, "dropout": 0.0, "seed": seed})
        return {"class_path": "kd_lightning.models.text.model_from_config", "init_args": init}

    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "limit_val_batches": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
        },
        "model": {
            "class_path": "kd_lightning.OfflineDistillation",
            "init_args": {
                "student": gpt2_config(16, 1),
                "teacher": teacher or gpt2_config(24, 0),
                "ce_weight": 1.0,
                "terms": [
                    {
                        "class_path": "kd_lightning.DistillTerm",
                        "init_args": {"loss": {"class_path": "kd_lightning.losses.ForwardKLLoss"}},
                    }
                ],
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
                **({} if teacher else {"allow_untrained_teacher": True}),
            },
        },
        "data": {
            "class_path": "kd_lightning.TextDataModule",
            "init_args": {
                "tokenizer": str(Path(BPE).resolve()),
                "texts": texts,
                "task": "clm",
                "packing": True,
                "max_length": 16,
                "batch_size": 4,
                "val_fraction": 0.1,
                "test_fraction": 0.1,
                "return_index": True,
            },
        },
    }
    path = tmp_path / f"{'store' if teacher else 'teacher'}.yaml"
    path.write_text(json.dumps(config))
    return str(path)


def test_the_label_command_writes_a_store_a_fit_trains_from(tmp_path, capsys, monkeypatch, one_torch_thread):
    from kd_lightning.cli import build_cli
    from kd_lightning.cli.label import main

    store = tmp_path / "store"
    main(["--config", fit_config(tmp_path, None), "--store", str(store), "--top_k", "8", "--shard_size", "4"])
    summary = capsys.readouterr().out
    assert f"token store {store} of logits:" in summary and "36 bytes per token" in summary
    opened = TokenStore(store).open()
    assert opened.vocab_size == 4096 and opened.key["tokenizer"] and opened.key["top_k"] == 8
    source = {"class_path": "kd_lightning.teachers.TokenStoreTeacher", "init_args": {"path": str(store)}}
    argv = ["kd-lightning", "fit", "--config", fit_config(tmp_path, source), "--test_after_fit", "false"]
    monkeypatch.setattr(sys, "argv", argv)  # LightningCLI reads sys.argv
    cli = build_cli()
    assert cli.trainer.global_step == 2 and isinstance(cli.model.teacher, TokenStoreTeacher)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", fit_config(tmp_path, None), "--store", str(store), "--top_k", "4"])
    assert exit_info.value.code != 0 and "differs in: top_k" in capsys.readouterr().err


@pytest.mark.slow  # two DDP processes (gloo, CPU)
def test_a_store_labelled_by_two_processes_equals_one_labelled_by_one(teacher, tmp_path, one_torch_thread):
    dataset = Blocks(padded=True)
    one = label(teacher, dataset, tmp_path / "one", top_k=8)
    two_processes = {"accelerator": "cpu", "strategy": "ddp_fork", "devices": 2}
    two = label(teacher, dataset, tmp_path / "two", top_k=8, trainer_kwargs=two_processes)
    assert json.loads((two.path / "index.json").read_text()) == json.loads((one.path / "index.json").read_text())
    for shard in range(4):
        for name, array in one._shard(shard).items():
            assert (two._shard(shard)[name] == array).all(), (shard, name)
