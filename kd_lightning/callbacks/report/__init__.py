"""The distillation report: every deployable network measured (size, CPU latency and throughput, test metrics),
compared in headlines, printed, logged and written as JSON, Markdown and a figure. The networks are the module's
:meth:`~kd_lightning.modules.DistillationModule.deployables`."""

from kd_lightning.callbacks.report.callback import DistillationReport
from kd_lightning.callbacks.report.measure import measure_network

__all__ = ["DistillationReport", "measure_network"]
