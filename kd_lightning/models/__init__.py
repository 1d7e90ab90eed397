"""Small reference networks (``nn.Module``s returning logits)."""

from kd_lightning.models.digits import DigitsCNN, DigitsMLP, TinyCNN

__all__ = ["DigitsCNN", "DigitsMLP", "TinyCNN"]
