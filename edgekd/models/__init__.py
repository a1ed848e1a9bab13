"""Model zoo and model loading. ``build_model("mobilenetv2:0.5")`` builds a zoo model by name."""

from edgekd.models.zoo import ZOO, build_model

__all__ = ["ZOO", "build_model"]
