"""A checkpoint's deployables as files: the network rebuilt from a checkpoint, the formats it is written in (a language
model also as Hugging Face and sentence-transformers folders), each file reloaded and checked before it is put in place,
and the preprocessing that travels with them.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``, ``teachers``, ``modules``.
"""

from kd_lightning.export.preprocessing import image_preprocessing, text_preprocessing, write_preprocessing
from kd_lightning.export.text import TEXT_FORMATS, Pooling, TextExport, export_text, pooling_of_folder

__all__ = [
    "TEXT_FORMATS",
    "Pooling",
    "TextExport",
    "export_text",
    "image_preprocessing",
    "pooling_of_folder",
    "text_preprocessing",
    "write_preprocessing",
]
