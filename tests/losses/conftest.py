"""Fixtures of the loss tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The loss tests' tensors are tiny: handing them to a second thread costs more than the maths (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``LossTester`` checks that apply to none of a file's cases (e.g. the adapter check of a file
    without adapters) rather than report them as skipped: pytest marks an empty parameter set with a skip."""
    here = Path(__file__).parent

    def empty(item: pytest.Item) -> bool:
        reasons = (str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skip"))
        return item.path.is_relative_to(here) and any(r.startswith("got empty parameter set") for r in reasons)

    deselected = [item for item in items if empty(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not empty(item)]
