"""The fp32 and int8 LiteRT tables of one pipeline convert each op model and validation network
once (issue 33: a quickstart on a host whose shipped tables do not fit spent most of its tables
stage converting the same networks twice). The int8 file taken from the shared conversion is the
same model as one converted on its own: same ops, same quantisation, same outputs."""

import importlib.util
from dataclasses import asdict

import numpy as np
import pytest

# found, not imported: TensorFlow must load after torch's compiler (convert/litert.py)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is None or importlib.util.find_spec("ai_edge_litert")
                                is None, reason="LiteRT conversion needs the LiteRT extra (pip install 'dna-deploy[litert]')")


def _outputs(path, x):
    from dna_deploy.runtimes.litert import LiteRTRunner

    with LiteRTRunner(path) as r:
        return r.infer(x)


def test_int8_comes_from_the_fp32_conversion_and_equals_its_own(tiny, tmp_path, monkeypatch):
    from dna_deploy.latency.artifacts import build_artifact, layer_job, share_conversions
    from dna_deploy.runtimes.litert import LiteRTRunner

    spec = next(s for s in tiny.block_specs(1, tiny.block_candidates(1)[-1]) if s.kind == "mbconv")
    shape = [1, spec.in_ch, spec.in_hw, spec.in_hw]
    share = {"dir": tmp_path / "shared", "precisions": ["fp32", "int8"]}

    def job(precision, folder):
        (tmp_path / folder).mkdir(exist_ok=True)
        return layer_job(asdict(spec), shape, runtime="litert", precision=precision, work_dir=tmp_path / folder,
                         name="op0001")

    fp32 = build_artifact(share_conversions(job("fp32", "fp32"), share))
    kept = list((tmp_path / "shared").rglob("int8.tflite"))
    assert len(kept) == 1  # the other precision, left for the int8 table

    conversions = []
    real = LiteRTRunner._convert.__func__
    monkeypatch.setattr(LiteRTRunner, "_convert", classmethod(lambda cls, *a, **k: conversions.append(k) or real(cls, *a, **k)))
    shared_int8 = build_artifact(share_conversions(job("int8", "int8"), share))
    assert conversions == []  # taken from the shared folder, not converted again
    alone_int8 = build_artifact(job("int8", "alone"))  # no share: converted on its own
    assert len(conversions) == 1 and conversions[0]["precisions"] == ("int8",)

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    a, b = _outputs(shared_int8, x), _outputs(alone_int8, x)
    assert a.shape == b.shape and np.array_equal(a, b)  # the same quantised model
    assert not np.array_equal(_outputs(fp32, x), a)  # and the fp32 one is not it
    # a job whose runtime converts one precision at a time, or a share of one precision, is left as it is
    assert share_conversions(job("fp32", "x"), {"dir": tmp_path, "precisions": ["fp32"]}) == job("fp32", "x")
