"""hmdbattn: human action recognition on HMDB51 with a 3D CNN and a Perceiver-style head.

Python API::

    from hmdbattn import load_config, build_model
    config = load_config("configs/hmdb51.toml", {"model.cnn_blocks": 4})
    model = build_model(config)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hmdbattn.config import Config, load_config

if TYPE_CHECKING:
    from hmdbattn.models.classifier import VideoClassifier, build_model

__version__ = "0.1.0"
__all__ = ["Config", "VideoClassifier", "__version__", "build_model", "load_config"]


def __getattr__(name: str) -> Any:
    # The model pulls in torch and torchvision (seconds); import it only when asked for, so
    # that `hmdbattn --help` and the config API start fast.
    if name in ("build_model", "VideoClassifier"):
        from hmdbattn.models import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'hmdbattn' has no attribute {name!r}")
