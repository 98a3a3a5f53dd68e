"""Shipping the network: export to ONNX / LiteRT / TensorRT with a model.json sidecar (export.py),
then verify each artifact against PyTorch on held-out images (verify.py)."""
