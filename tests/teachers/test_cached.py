"""The teacher-output cache: same targets as the live teacher, the exact replayed view, never stale, clear errors."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kd_lightning import DigitsDataModule, DistillTerm, OfflineDistillation, TeacherCache, TeacherCacheError
from kd_lightning.files.weights import load_weights
from kd_lightning.losses import ATLoss, KDLoss
from kd_lightning.models import DigitsCNN, DigitsMLP
from kd_lightning.teachers.cache_store import dense_logits


def make_module(cache: TeacherCache | None, **overrides) -> OfflineDistillation:
    kwargs = dict(
        student=DigitsMLP(hidden=(16,)),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        teacher_cache=cache,
    )
    kwargs.update(overrides)
    return OfflineDistillation(**kwargs)


class Recorder(L.Callback):
    """Per-step losses, and every training batch's inputs, indices and epoch."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        index = batch[2] if len(batch) > 2 else None
        self.batches.append((batch[0].clone(), index, trainer.current_epoch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class TeacherCalls(L.Callback):
    """Counts teacher forward passes inside training steps."""

    def __init__(self) -> None:
        self.in_step, self.calls = False, 0

    def on_fit_start(self, trainer, pl_module):
        pl_module.teacher.live.network.register_forward_hook(lambda *args: self.count())

    def count(self) -> None:
        self.calls += self.in_step

    def on_train_batch_start(self, *args):
        self.in_step = True

    def on_train_batch_end(self, *args):
        self.in_step = False


def fit(module_factory, tmp_path, epochs: int = 2, augment: bool = False, callbacks=(), **data_args) -> Recorder:
    L.seed_everything(0)
    module = module_factory()
    recorder = Recorder()
    trainer = fast_trainer(
        tmp_path, max_epochs=epochs, limit_train_batches=4, limit_val_batches=1, callbacks=[recorder, *callbacks]
    )
    data = DigitsDataModule(batch_size=32, shuffle_seed=0, augment=augment, **data_args)
    trainer.fit(module, datamodule=data)
    recorder.module, recorder.data = module, data
    return recorder


def test_cached_run_gives_the_uncached_losses_without_running_the_teacher(tmp_path, one_torch_thread):
    plain = fit(lambda: make_module(None), tmp_path)
    calls = TeacherCalls()
    cache = TeacherCache(tmp_path / "cache", dtype="float32")
    cached = fit(lambda: make_module(cache), tmp_path, callbacks=[calls])
    assert cached.losses == pytest.approx(plain.losses, abs=1e-5)
    assert calls.calls == 0  # the teacher ran in the build, the dry run and validation, never in a training step
    assert cache.build_seconds is not None and cache.build_seconds > 0
    half = fit(lambda: make_module(TeacherCache(tmp_path / "cache", dtype="float16")), tmp_path)
    assert half.losses == pytest.approx(plain.losses, rel=1e-3)  # float16 logits: measured 1.6e-3 absolute, ~1e-4 rel


def test_with_augmentation_every_step_trains_on_the_view_the_teacher_saw(tmp_path, one_torch_thread):
    cache = TeacherCache(tmp_path / "cache", views=2, dtype="float32")
    run = fit(lambda: make_module(cache), tmp_path, epochs=3, augment=True)
    dataset, teacher = run.data.splits["train"], run.module.teacher.live.network
    epochs_seen = {epoch for _, _, epoch in run.batches}
    assert epochs_seen == {0, 1, 2}
    for inputs, index, epoch in run.batches:
        view = epoch % 2
        replayed = torch.stack([dataset.sample(int(i), view)[0] for i in index])
        assert torch.equal(inputs, replayed)  # exactly the tensor the teacher saw when the cache was built
        stored = cache.outputs([inputs, None, index], epoch)["logits"]
        with torch.no_grad():
            assert torch.allclose(stored, teacher(inputs), atol=1e-5)
    views = [torch.stack([dataset.sample(i, v)[0] for i in range(64)]) for v in (0, 1)]
    assert not torch.equal(*views)  # the two stored views differ: augmentation is kept, not frozen to one view
    orders = {epoch: torch.cat([index for _, index, e in run.batches if e == epoch]) for epoch in (0, 2)}
    assert not torch.equal(orders[0], orders[2])  # epoch 2 replays view 0 in a new order
    assert dataset.views is None and not dataset.return_index  # after the fit the dataset is its own again


@pytest.mark.parametrize(
    "change",
    [
        "teacher weights",
        "dataset",
        "transform",
        "views",
    ],
)
def test_a_changed_teacher_dataset_transform_or_view_count_rebuilds(tmp_path, change, capsys, one_torch_thread):
    directory = tmp_path / "cache"
    fit(lambda: make_module(TeacherCache(directory)), tmp_path, epochs=1)
    again = TeacherCache(directory)
    fit(lambda: make_module(again), tmp_path, epochs=1)
    assert again.build_seconds is None  # same teacher, data, transform and K: reused
    capsys.readouterr()

    teacher = DigitsCNN(width=32)
    data_args, views = {}, 1
    if change == "teacher weights":
        load_weights(teacher, TEACHER_WEIGHTS)
        with torch.no_grad():
            teacher.head[-1].bias.add_(0.5)
    elif change == "dataset":
        data_args = {"train_fraction": 0.5}
    elif change == "transform":
        data_args = {"augment": True}
    else:
        views = 2
        data_args = {"augment": True}
    changed = TeacherCache(directory, views=views)

    def factory():
        weights = None if change == "teacher weights" else TEACHER_WEIGHTS
        return make_module(changed, teacher=teacher, teacher_weights=weights)

    fit(factory, tmp_path, epochs=1, **data_args)
    assert changed.build_seconds is not None  # rebuilt, never the stale cache
    assert len([p for p in directory.iterdir() if p.is_dir()]) == 2
    expected = {"teacher weights": "teacher's weights", "dataset": "dataset", "transform": "dataset", "views": "views"}
    assert expected[change] in capsys.readouterr().out


def test_top_k_cache_keeps_the_largest_probabilities_exact():
    logits = torch.randn(6, 20) * 3
    values, indices = logits.topk(5, dim=-1)
    dense = dense_logits(values, indices, logits.logsumexp(-1), 20)
    probs, rebuilt = logits.softmax(-1), dense.softmax(-1)
    assert torch.allclose(rebuilt.gather(1, indices), probs.gather(1, indices), atol=1e-6)
    assert torch.allclose(rebuilt.sum(-1), torch.ones(6))
    tail = torch.ones_like(probs, dtype=torch.bool).scatter_(1, indices, False)
    expected_tail = (1 - probs.gather(1, indices).sum(1)) / 15
    assert torch.allclose(rebuilt[tail].view(6, 15), expected_tail[:, None].expand(6, 15), atol=1e-6)


def test_top_k_cache_trains(tmp_path, one_torch_thread):
    cache = TeacherCache(tmp_path / "cache", top_k=3)
    run = fit(lambda: make_module(cache), tmp_path, epochs=1)
    assert len(run.losses) == 4 and all(torch.isfinite(torch.tensor(run.losses)))
    assert {p.name for p in cache.path.iterdir()} >= {"topk_values.npy", "topk_indices.npy", "logsumexp.npy"}


def test_feature_terms_read_cached_features(tmp_path, one_torch_thread):
    def factory(cache):
        terms = [DistillTerm(KDLoss(4.0), weight=0.9), DistillTerm(ATLoss(), student="layer2", weight=100.0)]
        return lambda: make_module(cache, student=DigitsCNN(width=8), terms=terms, ce_weight=0.1)

    plain = fit(factory(None), tmp_path)
    cache = TeacherCache(tmp_path / "cache", dtype="float32")
    cached = fit(factory(cache), tmp_path)
    assert cached.losses == pytest.approx(plain.losses, abs=1e-5)
    assert (cache.path / "feature0.npy").is_file()


def test_a_feature_the_cache_does_not_store_is_an_error(tmp_path):
    cache = TeacherCache(tmp_path / "cache", layers=["layer1"])
    terms = [DistillTerm(ATLoss(), student="layer2")]
    trainer = fast_trainer(tmp_path, max_steps=1)
    with pytest.raises(TeacherCacheError, match=r"teacher features \['layer2'\] that teacher_cache does not store"):
        trainer.fit(make_module(cache, student=DigitsCNN(width=8), terms=terms), datamodule=DigitsDataModule())
    assert trainer.global_step == 0


def test_a_cache_directory_that_is_not_writable_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    trainer = fast_trainer(tmp_path, max_steps=1)
    with pytest.raises(TeacherCacheError, match="is not writable .*set teacher_cache.init_args.directory"):
        trainer.fit(make_module(TeacherCache(blocker / "cache")), datamodule=DigitsDataModule())
    assert trainer.global_step == 0 and blocker.read_text() == "not a folder"


class UnseededNoise(Dataset):
    """Digits with noise from the global RNG in ``__getitem__``: its views cannot be replayed."""

    def __init__(self) -> None:
        self.x, self.y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        return self.x[index] + 0.1 * torch.randn(1, 8, 8), self.y[index], torch.tensor(index)


def test_a_transform_whose_randomness_cannot_be_replayed_is_refused(tmp_path):
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    loader = DataLoader(UnseededNoise(), batch_size=16)
    with pytest.raises(TeacherCacheError, match="randomness cannot be replayed"):
        trainer.fit(make_module(TeacherCache(tmp_path / "cache")), train_dataloaders=loader)
    assert trainer.global_step == 0


def test_several_views_need_a_replayable_dataset(tmp_path):
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)), torch.arange(64))
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(TeacherCacheError, match="views=2 needs a training dataset whose augmented views can be"):
        trainer.fit(make_module(TeacherCache(tmp_path / "c", views=2)), train_dataloaders=DataLoader(data, 16))


def test_a_plain_dataset_without_indices_is_refused(tmp_path):
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(TeacherCacheError, match=r"needs each sample's index in the training batch, \(x, y, index\)"):
        trainer.fit(make_module(TeacherCache(tmp_path / "c")), train_dataloaders=DataLoader(data, 16))
    assert trainer.global_step == 0


def test_a_plain_deterministic_dataset_with_indices_is_cached(tmp_path, one_torch_thread):
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)), torch.arange(64))
    cache = TeacherCache(tmp_path / "c", dtype="float32")
    trainer = fast_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(make_module(cache), train_dataloaders=DataLoader(data, 16, shuffle=True))
    assert trainer.global_step == 3 and cache.is_open and cache.samples == 64


def test_a_changed_sample_is_caught_at_the_step(tmp_path):
    cache = TeacherCache(tmp_path / "c", dtype="float32")
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)), torch.arange(64))
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(make_module(cache), train_dataloaders=DataLoader(data, 16))
    batch = next(iter(DataLoader(data, 16)))
    cache.outputs(batch, epoch=0)  # the stored view: fine
    with pytest.raises(TeacherCacheError, match="not the view the teacher cache holds outputs for"):
        cache.outputs([batch[0] + 0.01, batch[1], batch[2]], epoch=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"views": 0}, "views to be an integer >= 1"),
        ({"dtype": "int8"}, r"dtype in \['float16', 'float32'\]"),
        ({"top_k": 0}, "top_k to be None or an integer >= 1"),
    ],
)
def test_bad_cache_settings(kwargs, message):
    with pytest.raises(TeacherCacheError, match=message):
        TeacherCache(**kwargs)


def test_top_k_not_below_the_classes_is_refused(tmp_path):
    trainer = fast_trainer(tmp_path, max_steps=1)
    with pytest.raises(TeacherCacheError, match="top_k=10 must be smaller than the teacher's 10 classes"):
        trainer.fit(make_module(TeacherCache(tmp_path / "c", top_k=10)), datamodule=DigitsDataModule())


@pytest.mark.slow
def test_two_ddp_processes_share_one_build(tmp_path):
    cache = TeacherCache(tmp_path / "cache", dtype="float32")
    trainer = fast_trainer(tmp_path, strategy="ddp_spawn", devices=2, max_steps=2, limit_val_batches=1)
    trainer.fit(make_module(cache), datamodule=DigitsDataModule(batch_size=16))
    built = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(built) == 1 and not built[0].name.endswith(".building")
    reopened = TeacherCache(tmp_path / "cache", dtype="float32")
    run = fit(lambda: make_module(reopened), tmp_path, epochs=1)
    assert reopened.build_seconds is None  # the cache both processes built is the one a single process finds
    dataset = run.data.splits["train"]
    images = torch.stack([dataset.sample(i, 0)[0] for i in range(len(dataset))])
    stored = torch.from_numpy(np.load(reopened.path / "logits.npy"))[0]
    with torch.no_grad():
        assert torch.allclose(
            stored, run.module.teacher.live.network(images), atol=1e-5
        )  # every row written, by either process


class TemperedCNN(DigitsCNN):
    """The digits CNN whose logits are divided by a setting: same weights, other outputs when it changes."""

    def __init__(self, width: int = 32, temperature: float = 1.0) -> None:
        super().__init__(width=width)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


def test_a_changed_teacher_setting_with_the_same_weights_rebuilds(tmp_path, capsys, one_torch_thread):
    directory = tmp_path / "cache"
    fit(lambda: make_module(TeacherCache(directory), teacher=TemperedCNN(temperature=1.0)), tmp_path, epochs=1)
    capsys.readouterr()
    changed = TeacherCache(directory)
    fit(lambda: make_module(changed, teacher=TemperedCNN(temperature=4.0)), tmp_path, epochs=1)
    assert changed.build_seconds is not None and "teacher's weights or settings" in capsys.readouterr().out


class Shifted(DigitsCNN):
    """A forward that depends on something the key cannot see (a class attribute read at call time)."""

    shift = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + type(self).shift


def test_opening_a_cache_spot_checks_it_against_the_live_teacher(tmp_path, capsys, one_torch_thread):
    directory = tmp_path / "cache"
    fit(lambda: make_module(TeacherCache(directory, dtype="float32"), teacher=Shifted()), tmp_path, epochs=1)
    reused = TeacherCache(directory, dtype="float32")
    fit(lambda: make_module(reused, teacher=Shifted()), tmp_path, epochs=1)
    assert reused.build_seconds is None  # the same teacher: the stored logits pass the spot check
    capsys.readouterr()
    Shifted.shift = 9.0
    try:
        rebuilt = TeacherCache(directory, dtype="float32")
        fit(lambda: make_module(rebuilt, teacher=Shifted()), tmp_path, epochs=1)
    finally:
        Shifted.shift = 0.0
    out = capsys.readouterr().out
    assert rebuilt.build_seconds is not None and "differ from the live teacher's by up to 9" in out


class PrefetchSeen(L.Callback):
    """Whether each training step found its batch's stored rows already read on the host."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(bool(pl_module.teacher._prefetched))


class DigitsWithOwnTransferHook(DigitsDataModule):
    """A datamodule with its own ``on_before_batch_transfer``: Lightning calls it instead of the module's."""

    def on_before_batch_transfer(self, batch, dataloader_idx):
        return batch


def test_rows_are_read_before_the_batch_moves_and_in_the_step_when_a_datamodule_takes_the_hook(
    tmp_path, recwarn, one_torch_thread
):
    import warnings

    from kd_lightning.modules._logging import HOOK_WARNING

    plain = fit(lambda: make_module(None), tmp_path)
    seen = PrefetchSeen()
    cache = TeacherCache(tmp_path / "cache", dtype="float32")
    cached = fit(lambda: make_module(cache), tmp_path, callbacks=[seen])
    assert seen.seen and all(seen.seen), "every step's rows were read before the batch moved to the device"
    assert not [w for w in recwarn if "on_before_batch_transfer" in str(w.message)], "no warning the user cannot act on"
    assert not [f for f in warnings.filters if f[1] is not None and f[1].pattern == HOOK_WARNING], "filter removed"

    L.seed_everything(0)
    own_hook, module, seen = Recorder(), make_module(TeacherCache(tmp_path / "cache", dtype="float32")), PrefetchSeen()
    trainer = fast_trainer(
        tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[own_hook, seen]
    )
    trainer.fit(module, datamodule=DigitsWithOwnTransferHook(batch_size=32, shuffle_seed=0))
    assert not any(seen.seen), "the datamodule's hook ran instead: rows are read in the step"
    assert own_hook.losses == pytest.approx(cached.losses, abs=1e-6)
    assert cached.losses == pytest.approx(plain.losses, abs=1e-5)


def test_a_token_dataset_is_pointed_to_the_token_store(tmp_path):
    tokens = [{"input_ids": torch.arange(8), "labels": torch.arange(8)} for _ in range(4)]
    with pytest.raises(TeacherCacheError, match=r"kd-lightning-label .* kd_lightning\.TokenStoreTeacher"):
        TeacherCache(tmp_path / "cache").prepare_dataset(tokens)
