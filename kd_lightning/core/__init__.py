"""The contracts every other folder builds on: the batch, token positions, feature taps, the objective.

May import: ``kd_lightning.losses``.
"""
