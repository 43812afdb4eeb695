"""hmdbattn: human action recognition on HMDB51 with a 3D CNN and a Perceiver-style head.

Python API::

    from hmdbattn import load_config, build_model
    config = load_config("configs/hmdb51.toml", {"model.cnn_blocks": 4})
    model = build_model(config)
"""

from hmdbattn.config import Config, load_config
from hmdbattn.models.classifier import VideoClassifier, build_model

__version__ = "0.1.0"
__all__ = ["Config", "VideoClassifier", "__version__", "build_model", "load_config"]
