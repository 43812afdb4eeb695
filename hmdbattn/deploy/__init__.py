"""Deployment: a trained model exported to ONNX or TorchScript, and predicting with it.

- `export` (torch, the training code): ``hmdbattn export`` writes the model with a dynamic
  batch dimension and, beside it, ``<model>.json``: everything inference needs (classes, clip
  geometry, normalisation, the input layout), described by `meta`.
- `meta` (no torch): what that JSON holds, and the checks that refuse a file that is not our
  export or a JSON that does not describe the model beside it.
- `runtime` (no torch for ONNX): the scorers `hmdbattn predict --model` uses, ONNX Runtime
  for ``.onnx`` files, ``torch.jit`` for TorchScript; the windows, clips and results are
  `hmdbattn.predict`'s, the same as for a checkpoint.
"""
