"""The token store of an encoder: per-token states (its last hidden states, a chosen layer) and pooled sentence
embeddings, labelled once; a student trained from them trains as from the live teacher."""

from __future__ import annotations

import copy
import functools
import json
import os
import signal

import lightning as L
import pytest
import torch
from helpers import LossRecorder, fast_trainer

from kd_lightning import DistillTerm, OfflineDistillation
from kd_lightning.core.batch import Batch
from kd_lightning.core.taps import mean_pool
from kd_lightning.losses import EmbeddingCosineLoss, HiddenCosineLoss, HiddenMSELoss, PairwiseCosineLoss
from kd_lightning.teachers import TokenStore, TokenStoreError, TokenStoreTeacher, label_corpus

transformers = pytest.importorskip("transformers")
from kd_lightning.data.text import TokenCollator  # noqa: E402
from kd_lightning.models.text import model_from_config  # noqa: E402

VOCAB = 60
LAYER = "encoder.layer.0"
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def bert(width: int, seed: int) -> torch.nn.Module:
    sizes = {"vocab_size": VOCAB, "num_heads": 2, "max_positions": 32, "dropout": 0.0}
    return model_from_config("bert", "base", hidden_size=width, num_layers=2, seed=seed, **sizes)


class Sentences(torch.utils.data.Dataset):
    """Unlabelled sentences of several lengths (padded in a batch), with their index."""

    def __init__(self, seed: int = 0, count: int = 12) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = [
            torch.randint(5, VOCAB, (length,), generator=generator) for length in [9, 4, 7, 12] * (count // 4)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.items[index], "index": torch.tensor(index)}


def loader(dataset: Sentences) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=TokenCollator(0))


def terms(layer: bool = True) -> list[DistillTerm]:
    chosen = [
        DistillTerm(HiddenCosineLoss(), name="cosine"),
        DistillTerm(EmbeddingCosineLoss(), student="pooled", name="pooled_cosine"),
        DistillTerm(PairwiseCosineLoss(), weight=10.0, student="pooled", name="pairwise_cosine"),
    ]
    return chosen + ([DistillTerm(HiddenMSELoss(), student=LAYER, name="layer_mse")] if layer else [])


def fit(tmp_path, student, teacher, dataset, steps: int = 3, layer: bool = True):
    live = {} if isinstance(teacher, TokenStoreTeacher) else {"allow_untrained_teacher": True}
    module = OfflineDistillation(student, teacher, terms=terms(layer), ce_weight=0.0, optimizer=SGD, **live)
    record = LossRecorder()
    trainer = fast_trainer(
        tmp_path, max_steps=steps, limit_train_batches=steps, limit_val_batches=0, callbacks=[record]
    )
    trainer.fit(module, train_dataloaders=loader(dataset))
    return record.losses, module.student


@pytest.fixture(scope="module")
def teacher():
    return bert(16, 0)


def label(teacher, dataset, path, **kwargs) -> TokenStore:
    outputs = kwargs.pop("outputs", ["logits", "pooled", LAYER])
    return label_corpus(teacher, dataset, path, batch_size=3, shard_size=5, outputs=outputs, **kwargs)


def test_states_and_pooled_embeddings_are_stored_as_the_teacher_gives_them(teacher, tmp_path):
    dataset = Sentences()
    store = label(teacher, dataset, tmp_path / "store", dtype="float32")
    assert store.outputs == ["logits", "pooled", LAYER] and store.vocab_size is None
    assert store.key["kinds"] == {"logits": "states", "pooled": "pooled", LAYER: "states"}
    assert store.bytes_per_token() == (2 * 16 * 4, 16 * 4)
    batch = TokenCollator(0)([dataset[i] for i in (3, 1, 10)])  # padded, out of order, across shards
    read = TokenStoreTeacher(store.path)
    read.bind(None, ["logits", "pooled", LAYER], 0)
    got = read.outputs(Batch.parse(batch))
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got["logits"][mask], live.last_hidden_state[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[LAYER][mask], live.hidden_states[1][mask], rtol=0, atol=1e-6)
    assert (got["logits"][~mask] == 0).all()
    reference = torch.stack(
        [live.last_hidden_state[b, : int(mask[b].sum())].mean(0) for b in range(len(mask))]
    )  # the mean over each sentence's real tokens
    torch.testing.assert_close(got["pooled"], reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(mean_pool(live.last_hidden_state, mask), reference, rtol=0, atol=1e-6)


def test_a_student_trains_from_stored_states_as_from_the_live_teacher(teacher, tmp_path, one_torch_thread):
    dataset = Sentences()
    store = label(teacher, dataset, tmp_path / "store", dtype="float32")
    student = bert(16, 1)
    live_losses, live_student = fit(tmp_path, copy.deepcopy(student), teacher, dataset)
    store_losses, store_student = fit(tmp_path, copy.deepcopy(student), TokenStoreTeacher(store.path), dataset)
    assert len(live_losses) == 3 and live_losses[0] > 0
    torch.testing.assert_close(torch.tensor(store_losses), torch.tensor(live_losses), rtol=0, atol=1e-5)
    for (name, a), b in zip(live_student.state_dict().items(), store_student.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


def test_a_term_reading_an_output_the_store_lacks_is_refused_before_the_first_step(teacher, tmp_path):
    dataset = Sentences()
    store = label(teacher, dataset, tmp_path / "store", outputs=["logits", "pooled"])
    with pytest.raises(TokenStoreError, match=rf"read the teacher's \['{LAYER}'\] but .* holds \['logits', 'pooled'\]"):
        fit(tmp_path, bert(16, 1), TokenStoreTeacher(store.path), dataset)
    losses, _ = fit(tmp_path, bert(16, 1), TokenStoreTeacher(store.path), dataset, steps=1, layer=False)
    assert len(losses) == 1
    with pytest.raises(TokenStoreError, match="differs in: stored outputs"):
        label(teacher, dataset, store.path, outputs=["pooled"])


def test_what_cannot_be_stored_is_refused_before_labelling(teacher, tmp_path):
    dataset = Sentences()
    with pytest.raises(TokenStoreError, match="top_k=4 keeps the largest token logits, but .* hold no language-model"):
        label(teacher, dataset, tmp_path / "a", top_k=4)
    with pytest.raises(ValueError, match="has no submodule named 'encoder.layer.9'; nearest valid names"):
        label(teacher, dataset, tmp_path / "b", outputs=["encoder.layer.9"])
    with pytest.raises(TokenStoreError, match="per token .* but it has shape"):
        label(teacher, dataset, tmp_path / "c", outputs=["pooler"])
    masked_lm = model_from_config("bert", "masked_lm", hidden_size=16, num_layers=1, num_heads=2, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="'pooled' averages an encoder's last hidden states"):
        label(masked_lm, dataset, tmp_path / "d", outputs=["pooled"])
    with pytest.raises(TokenStoreError, match="non-empty list of distinct output names"):
        label(teacher, dataset, tmp_path / "e", outputs=["pooled", "pooled"])
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_a_store_written_before_stored_outputs_opens_as_a_logits_store(tmp_path):
    network = model_from_config("gpt2", "causal_lm", hidden_size=16, num_layers=1, num_heads=2, vocab_size=VOCAB)
    store = label_corpus(network, Sentences(), tmp_path / "store", top_k=4, shard_size=5)
    for name in ("key.json", "index.json"):  # the fields an earlier store lacks
        stored = json.loads((store.path / name).read_text())
        key = stored if name == "key.json" else stored["key"]
        for field in ("outputs", "kinds", "widths"):
            del key[field]
        (store.path / name).write_text(json.dumps(stored))
    opened = TokenStore(store.path).open()
    assert opened.outputs == ["logits"] and opened.bytes_per_token() == (4 * 4 + 4, 0)
    assert label_corpus(network, Sentences(), store.path, top_k=4).is_finished  # the same store: not relabelled


def test_a_sigterm_stops_labelling_between_shards_and_labelling_again_resumes(teacher, tmp_path):
    class Preempt(L.Callback):
        def on_predict_batch_end(self, trainer, *args) -> None:
            if trainer.predict_loop.batch_progress.current.completed == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # the cluster preempts the job during the first shard

    dataset, path = Sentences(), tmp_path / "store"
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[Preempt()])
    with pytest.raises(SystemExit):
        label(teacher, dataset, path, trainer=trainer)
    assert not TokenStore(path).is_finished and len(TokenStore(path).missing_shards()) == 2  # 1 of 3 shards kept
    assert label(teacher, dataset, path).is_finished
