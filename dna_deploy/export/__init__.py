"""Pure converters: path in, path out, keyword-only options.

torch_to_onnx -> onnx_to_litert (fp32/fp16/int8 via onnx2tf) | onnx_to_tensorrt (serialized engine).
"""

from dna_deploy.export.onnx import torch_to_onnx

__all__ = ["torch_to_onnx"]
