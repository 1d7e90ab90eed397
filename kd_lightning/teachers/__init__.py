"""Who teaches: the teacher sources a mode reads its targets from.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``.
"""
