"""Models: building and loading them, their quantizable layers, content hashes.

Submodules (import them directly; this package imports nothing heavy):

- ``loading``: ``ModelSpec`` and ``load_model`` (architecture, torch.export
  program; TorchScript refused; weights only through ``weights_only=True``).
- ``model_files``: the torch-free TorchScript check (zip contents, no unpickling).
- ``layers``: ``discover_layers`` -> ``LayerProfile`` (name, kind, weights,
  MACs per sample).
- ``digits_cnn``: the small CNN for scikit-learn's digits ("digits_cnn").
- ``hashing``: ``model_hash`` and ``file_sha256`` (the latter torch-free).
"""
