"""``benchmarks/gpu_check.py`` on the CPU: the dry run measures every section that applies, skips the CUDA-only ones
with the reason, writes its JSON and one table; ``--out`` never replaces a file it did not write; the sync counter
splits its count between the step and the time between steps."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from types import ModuleType

import lightning as L
import pytest
import torch
from helpers import ROOT
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


def test_the_dry_run_measures_every_section_that_applies_on_cpu(gpu_check, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "gpu.json"
    out.write_text(json.dumps({"script": gpu_check.MARKER, "sections": {}}))  # an earlier report: replaced
    assert gpu_check.main(["--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["script"] == gpu_check.MARKER and report["dry_run"] is True and report["device"] == "cpu"
    assert {"device_name", "torch", "lightning", "date"} <= set(report)
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    assert report["failed"] == []
    for name in ("cifar", "token_kd", "cached"):
        section = report["sections"][name]
        assert section["status"] == "ok", section
        values = [row["value"] for row in section["rows"] if row["value"] is not None]
        assert values and all(math.isfinite(value) and value > 0 for value in values), section["rows"]
    units = {name: [row["unit"] for row in report["sections"][name]["rows"]] for name in report["sections"]}
    assert units["cifar"].count("ratio") == 2 * len(gpu_check.SETTINGS)  # c/d and c/(a+b) in every setting
    assert units["cifar"].count("images/s") == len(gpu_check.SETTINGS)
    assert "tokens/s" in units["token_kd"] and "ratio" in units["cached"]
    for name in ("memory", "fsdp", "syncs"):
        status = report["sections"][name]["status"]
        assert status.startswith("skipped: ") and len(status) > len("skipped: ") + 10, status
    printed = capsys.readouterr().out
    assert "| check | setting | value | unit | note |" in printed
    assert all(f"| {name} |" in printed for name in gpu_check.SECTIONS)


@pytest.mark.parametrize("content", [b"\x00\x01safetensors-like bytes", b'{"script": "someone else"}\n'])
def test_out_refuses_a_file_the_script_did_not_write(gpu_check, tmp_path, capsys, content):
    out = tmp_path / "teacher.safetensors"
    out.write_bytes(content)
    assert gpu_check.main(["--dry-run", "--device", "cpu", "--out", str(out)]) == 2
    assert out.read_bytes() == content
    error = capsys.readouterr().err
    assert "--out" in error and str(out) in error and "left unchanged" in error


class Syncing(L.LightningModule):
    """Emits one sync-debug warning inside every training step and one in its own ``on_train_batch_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        return self.layer(batch[0]).sum()

    def on_train_batch_end(self, *args):
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:called a synchronizing CUDA operation")  # the steps outside the window
@pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.")
def test_the_sync_counter_splits_the_step_from_the_time_between_steps(gpu_check, tmp_path):
    modes = []
    counter = gpu_check.SyncCounter(2, 4, modes.append)
    loader = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[counter],
        default_root_dir=tmp_path,
    )
    trainer.fit(Syncing(), train_dataloaders=loader)
    assert counter.steps == 3 and counter.in_step == 3 and counter.between == 3
    assert modes == ["warn", 0] * 3
    assert "test_gpu_check.py" in counter.describe()


def test_the_sync_rows_run_on_cpu_with_the_mode_switch_replaced(gpu_check, one_torch_thread):
    plan = gpu_check.Plan(torch.device("cpu"), gpu_check.DRY, True, "eager", dict(gpu_check.BUDGETS_S))
    section = gpu_check.Section("syncs", 60.0)
    modes = []
    with gpu_check.quiet_lightning():
        gpu_check.count_syncs(section, plan, modes.append)
    assert not section.errors
    assert [row.value for row in section.rows] == [0.0, 0.0, 0.0]  # nothing warns on a CPU
    assert modes == ["warn", 0] * (2 * (plan.sizes.sync_last - plan.sizes.sync_first + 1))
