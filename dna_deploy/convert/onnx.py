"""PyTorch -> ONNX, checked by onnx.checker and simplified by onnxslim."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from dna_deploy.io import atomic_write_bytes

INPUT_NAME, OUTPUT_NAME = "input", "output"


def torch_to_onnx(module, example, path: str | os.PathLike, *, opset: int = 17, dynamic_batch: bool = False,
                  dynamo: bool = False, slim: bool = True) -> Path:
    """Export in eval mode. dynamo=False: the TorchScript exporter, ~10x faster for small graphs and
    honouring opset 13-17; dynamo=True uses torch.export (needs onnxscript, opset >= 18)."""
    import onnx
    import torch

    path = Path(path)
    module = module.eval()
    buf = io.BytesIO()
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset if not dynamo else max(opset, 18))
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=dynamo, **kwargs)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    if slim:
        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            model = onnxslim.slim(model)
        onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def onnx_io(path: str | os.PathLike) -> dict:
    """Input/output names and static shapes of an ONNX file (None for a dynamic axis)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def shape(v):
        return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]

    return {"inputs": {v.name: shape(v) for v in m.graph.input},
            "outputs": {v.name: shape(v) for v in m.graph.output}, "opset": m.opset_import[0].version}
