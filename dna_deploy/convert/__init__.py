"""Pure converters, path in and path out with keyword-only options: the graph a runtime runs.

torch_to_onnx (onnx.py) -> onnx_to_litert (litert.py: fp32/fp16/int8 via onnx2tf) |
onnx_to_tensorrt (tensorrt.py: a serialized engine). Profiling and export both go through these,
so the op models in a latency table are built exactly as the deployed network is.
"""
