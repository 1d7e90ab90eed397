"""A checkpoint's deployables as files: the network rebuilt from a checkpoint, the formats it is written in, each file
reloaded and checked before it is put in place.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``, ``teachers``, ``modules``.
"""
