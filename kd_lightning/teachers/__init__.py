"""Who teaches: the teacher sources a mode reads its targets from (see :mod:`kd_lightning.teachers.base`).

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``.
"""

from kd_lightning.losses.token import SparseLogits
from kd_lightning.teachers.base import EXTERNAL, TEMPORAL, TeacherSource, hinton_terms
from kd_lightning.teachers.cache_store import TeacherCache, TeacherCacheError
from kd_lightning.teachers.cached import CachedTeacher
from kd_lightning.teachers.ensemble import TeacherEnsemble
from kd_lightning.teachers.frozen import FrozenTeacher
from kd_lightning.teachers.normalization import Renormalize
from kd_lightning.teachers.temporal import EMATeacher, PSKDTeacher, SnapshotTeacher, StudentCopy
from kd_lightning.teachers.token_store import TokenStore, TokenStoreError, TokenStoreTeacher, label_corpus

__all__ = [
    "EXTERNAL",
    "TEMPORAL",
    "CachedTeacher",
    "EMATeacher",
    "FrozenTeacher",
    "PSKDTeacher",
    "Renormalize",
    "SnapshotTeacher",
    "SparseLogits",
    "StudentCopy",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherEnsemble",
    "TeacherSource",
    "TokenStore",
    "TokenStoreError",
    "TokenStoreTeacher",
    "hinton_terms",
    "label_corpus",
]
