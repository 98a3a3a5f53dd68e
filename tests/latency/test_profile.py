import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.errors import TableError
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import build_bundle, measure_bundle, profile
from dna_deploy.latency.table import LatencyTable
from dna_deploy.latency.validate import validate_table

runner = CliRunner()


@pytest.fixture(scope="module")
def ort_table(tmp_path_factory):
    from dna_deploy.space import load_space

    out = tmp_path_factory.mktemp("lut") / "ort__tiny.json"
    profile(load_space("tiny"), load_device("x86-cpu-onnxruntime"), out, rounds=2, runs_per_round=10,
            max_extra_rounds=1, show_progress=False, warmup_s=0.02)
    return out


def test_table_format_and_coverage(ort_table, tiny):
    raw = json.loads(ort_table.read_text())
    assert raw["format"] == "dna-deploy-lut/1"
    meta = raw["meta"]
    assert meta["space_fingerprint"] == tiny.fingerprint and meta["device"]["name"] == "x86-cpu-onnxruntime"
    assert meta["versions"]["onnxruntime"] and meta["host"]["cpu"] and meta["date"]
    table = LatencyTable.load(ort_table)
    # the machine's full speed as its probe saw it, for a verify on this machine to start from
    probe = table.speed_probe_here()
    assert probe["fastest_ms"] > 0 and probe["loop"] > 0 and probe["python"] == sys.version and probe["node"]
    assert set(table.entries) == {s.key for s in tiny.all_layer_specs()}
    for e in table.entries.values():
        assert 0 < e["p10_ms"] <= e["median_ms"] <= e["p90_ms"]
        assert 2 <= e["rounds"] <= 3 and 1 <= e["rounds_kept"] <= e["rounds"] and e["runs"] == 10 * e["rounds_kept"]
    # the key is readable and names shapes and settings
    assert any(k.startswith("mbconv-in:32x32x8-out:16x16x16-k5-e6-s2") for k in table.entries)


def test_prediction_is_sum_of_layers(ort_table, tiny):
    table = LatencyTable.load(ort_table)
    arch = tiny.largest_arch()
    assert table.statistic == "p10_ms" and table.meta["statistic"] == "p10_ms"  # new tables sum 10th percentiles
    expected = sum(table.entries[s.key]["p10_ms"] for s in tiny.layer_specs(arch) if s.key)
    assert table.predict(tiny, arch)["raw_ms"] == pytest.approx(expected)
    legacy = LatencyTable(meta={k: v for k, v in table.meta.items() if k != "statistic"}, entries=table.entries)
    assert legacy.statistic == "median_ms"  # tables from before meta.statistic keep the medians they were fitted to
    assert legacy.raw_ms(tiny, arch) == pytest.approx(sum(table.entries[s.key]["median_ms"]
                                                           for s in tiny.layer_specs(arch) if s.key))
    small = table.predict(tiny, tiny.smallest_arch())["raw_ms"]
    assert small < expected


def test_table_for_another_space_is_refused(ort_table, mbconv):
    with pytest.raises(TableError, match="measured for space 'tiny'"):
        LatencyTable.load(ort_table).predict(mbconv, mbconv.largest_arch())


def test_missing_entry_names_it_and_the_nearest(ort_table, tiny, tmp_path):
    d = json.loads(ort_table.read_text())
    key = next(k for k in d["entries"] if k.startswith("mbconv-in:8x8x24"))
    del d["entries"][key]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    table = LatencyTable.load(p)
    with pytest.raises(TableError, match="has no entry") as e:
        table.predict(tiny, tiny.largest_arch()) if "k7-e6" in key else table.layers_ms(
            [s for s in tiny.all_layer_specs() if s.key == key])
    assert "nearest" in str(e.value)


@pytest.mark.parametrize("content, fragment", [
    ("{\"format\": \"dna-deploy-lut/1\", \"meta\": {}, \"entr", "corrupt or truncated"),
    ("[1, 2]", "not a dna-deploy latency table"),
    ("{\"format\": \"dna-deploy-lut/1\", \"meta\": {}, \"entries\": {\"x\": {}}}", "no valid median_ms"),
])
def test_bad_tables_are_one_line_errors(tmp_path, content, fragment):
    p = tmp_path / "bad.json"
    p.write_text(content)
    r = runner.invoke(app, ["profile", "predict", "-s", "tiny", "-t", str(p), "k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip"])
    assert r.exit_code == 1 and fragment in r.output and "Traceback" not in r.output


def test_validate_fits_calibration_on_real_runtime(ort_table, tiny, tmp_path):
    report = validate_table(ort_table, tiny, samples=10, plot_path=tmp_path / "fid.png", show_progress=False,
                            rounds=2, runs_per_round=10, work_dir=tmp_path / "val", max_extra_rounds=4)
    assert report["held_out_networks"] >= 4 and report["fit_networks"] >= 4
    assert report["calibration"]["a"] > 0
    # the calibration is the line through the fit networks only that minimises relative residuals,
    # and the held-out figures are computed from networks it never saw (timings vary by machine: no
    # threshold on them)
    nets = json.loads((tmp_path / "val" / "networks.json").read_text())
    fit = [n for n in nets if not n["held_out"]]
    held = [n for n in nets if n["held_out"]]
    y = np.array([n["measured_ms"] for n in fit])
    a, b = np.polyfit([n["raw_sum_ms"] for n in fit], y, 1, w=1 / y)
    assert report["calibration"]["a"] == pytest.approx(a) and report["calibration"]["b"] == pytest.approx(b)
    rel = [(a * n["raw_sum_ms"] + b - n["measured_ms"]) / n["measured_ms"] for n in held]
    assert report["calibrated"]["n"] == len(held) == report["held_out_networks"]
    assert report["calibrated"]["rmspe_pct"] == pytest.approx(100 * float(np.sqrt(np.mean(np.square(rel)))))
    assert report["calibrated"]["within_10pct"] == pytest.approx(float(np.mean(np.abs(rel) <= 0.10)))
    # each network's figure is the p10 of its quiet rounds (kept per round: 2 base rounds, up to 4
    # extra until two quiet rounds were timed while the machine's speed probe was quiet too)
    from dna_deploy.runtimes.base import SpeedProbe, confirmed, quiet_stats

    cache = json.loads((tmp_path / "val" / "measurements.json").read_text())
    rounds, probes = cache["samples"], cache["probes"]
    speed = SpeedProbe.resumed(probes)
    assert 0 < speed.fastest_ms < 1e3
    # judged from the table's own fastest probe too (profiled on this machine, before validation)
    speed.fastest_ms = min(speed.fastest_ms, LatencyTable.load(ort_table).speed_probe_here()["fastest_ms"])
    for n in nets:
        r, p = rounds[n["arch"]], probes[n["arch"]]
        assert 2 <= len(r) == len(p) <= 6 and all(len(x) == 10 for x in r)
        assert confirmed(r, p, speed) or len(r) == 6
        assert n["confirmed"] == confirmed(r, p, speed)
        assert n["measured_ms"] == pytest.approx(quiet_stats(r).p10_ms)
    assert report["unconfirmed_held_out"] == sum(not n["confirmed"] for n in held)
    sure = [r for n, r in zip(held, rel) if n["confirmed"]]  # held out, figure backed by two quiet probed rounds
    if sure:
        assert report["calibrated_confirmed"]["n"] == len(sure)
        assert report["calibrated_confirmed"]["within_10pct"] == pytest.approx(float(np.mean(np.abs(sure) <= 0.10)))
    else:
        assert report["calibrated_confirmed"] is None
    assert (tmp_path / "fid.png").stat().st_size > 1000
    table = LatencyTable.load(ort_table)
    assert table.calibration["a"] == pytest.approx(report["calibration"]["a"])
    p = table.predict(tiny, tiny.largest_arch())
    assert p["calibrated"] and p["predicted_ms"] != p["raw_ms"]


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    """One ONNX Runtime bundle of the tiny space, shared by the tests that only read it."""
    from dna_deploy.space import load_space

    return build_bundle(load_space("tiny"), load_device("x86-cpu-onnxruntime"), tmp_path_factory.mktemp("bundle") / "b",
                        show_progress=False)


@pytest.mark.slow
def test_resume_after_kill(ort_bundle, tmp_path):
    bundle = ort_bundle
    out = tmp_path / "t.json"
    # warmup_s=0: this checks resume, not timing quality; 40 rounds of 51 ops (each with its speed
    # probes) leave the kill well inside the run
    code = (f"from dna_deploy.latency.profiler import measure_bundle; "
            f"measure_bundle({str(bundle)!r}, {str(out)!r}, rounds=40, runs_per_round=5, max_extra_rounds=0, "
            f"show_progress=False, warmup_s=0)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 120
    while time.time() < deadline:
        if partial.is_file() and json.loads(partial.read_text() or "{}").get("rounds_done", 0) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.is_file()
    done_before = json.loads(partial.read_text())["rounds_done"]
    assert done_before >= 2
    table = measure_bundle(bundle, out, rounds=40, runs_per_round=5, max_extra_rounds=0, show_progress=False,
                           warmup_s=0)
    assert table.meta["timing"]["resumed_at_round"] >= done_before
    assert all(e["rounds"] == 40 and e["runs"] == 5 * e["rounds_kept"] for e in table.entries.values())
    assert not partial.exists()


def test_bundle_and_run_bundle_cli(tiny, tmp_path):
    r = runner.invoke(app, ["profile", "bundle", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", str(tmp_path / "b.zip"),
                            "-f", "json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile", "run-bundle", str(tmp_path / "b.zip"), "-o", str(tmp_path / "t.json"),
                            "--rounds", "1", "--runs", "3", "--warmup-s", "0", "-f", "json"])
    assert r.exit_code == 0, r.output
    assert LatencyTable.load(tmp_path / "t.json").entries


def test_run_bundle_imports_no_torch(ort_bundle, tmp_path):
    bundle = ort_bundle
    code = (f"import sys; from dna_deploy.latency.profiler import measure_bundle; "
            f"measure_bundle({str(bundle)!r}, {str(tmp_path / 't.json')!r}, rounds=1, runs_per_round=2, show_progress=False, "
            f"max_extra_rounds=0, warmup_s=0); "
            f"assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_device_and_missing_runtime_errors():
    r = runner.invoke(app, ["profile", "-d", "nope", "-s", "tiny"])
    assert r.exit_code == 1 and "unknown device 'nope'" in r.output
    r = runner.invoke(app, ["profile", "-d", "jetson-orin-tensorrt-fp16", "-s", "tiny", "-o", "/tmp/x.json"])
    import importlib.util

    assert "Traceback" not in r.output
    if importlib.util.find_spec("tensorrt") is None:
        assert r.exit_code == 1 and "pip install 'dna-deploy[tensorrt]'" in r.output
    else:  # TensorRT installed: it profiles when a GPU is there, or says plainly that none is
        assert r.exit_code == 0 or ("GPU" in r.output or "CUDA" in r.output)


def test_validate_never_rewrites_a_foreign_table(ort_table, tmp_path):
    """A table measured on another host is refused in place; --force calibrates a copy beside it,
    stamped with this host, and the original stays byte for byte."""
    from dna_deploy.host import host_description

    d = json.loads(ort_table.read_text())
    d["meta"]["host"] = {**d["meta"]["host"], "cpu": "Intel(R) Xeon(R) Platinum 8488C"}
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(d))
    original = foreign.read_bytes()
    r = runner.invoke(app, ["profile", "validate", "-t", str(foreign), "-n", "6", "--rounds", "1"])
    assert r.exit_code == 1 and "another host" in r.output and "Xeon" in r.output
    r = runner.invoke(app, ["profile", "validate", "-t", str(foreign), "-n", "6", "--rounds", "1", "--force", "-f", "json"])
    assert r.exit_code == 0, r.output
    assert foreign.read_bytes() == original
    copy = Path(json.loads(r.output[r.output.index("{"):])["table"])
    assert copy.parent == tmp_path and copy != foreign
    cal = LatencyTable.load(copy).calibration
    assert cal["host"]["cpu_flags_sha256"] == host_description()["cpu_flags_sha256"]
    assert LatencyTable.load(copy).meta["host"]["cpu"].startswith("Intel")  # the op timings keep their origin


def test_two_profile_runs_on_one_output_are_refused(ort_bundle, tmp_path):
    from dna_deploy.io import exclusive_lock

    out = tmp_path / "t.json"
    with exclusive_lock(out, what="profile run"):
        r = runner.invoke(app, ["profile", "run-bundle", str(ort_bundle), "-o", str(out), "--rounds", "1", "--runs", "2"])
    assert r.exit_code == 1 and "another profile run is writing" in r.output
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_tables_are_keyed_by_the_body_so_another_class_count_needs_only_its_head():
    """A 4-class variant of the space shares every entry of the shipped 10-class table but the head:
    the table fits its body, says plainly that the head is missing, and is never silently skipped."""
    import dataclasses

    from dna_deploy.errors import TableError
    from dna_deploy.io import shipped_dir
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.space import load_space

    tiny = load_space("tiny")
    four = dataclasses.replace(tiny, num_classes=4)
    table = LatencyTable.load(shipped_dir("latency_tables") / "x86-cpu-onnxruntime__tiny.json")
    assert four.fingerprint != tiny.fingerprint and four.body_fingerprint == tiny.body_fingerprint
    assert table.fits(tiny) and table.fits_body(four) and not table.fits(four)
    with pytest.raises(TableError, match="no head for 4 classes"):
        table.predict(four, four.smallest_arch())
    other = dataclasses.replace(tiny, head_channels=96)
    assert not table.fits_body(other)
    with pytest.raises(TableError, match="was measured for space"):
        table.predict(other, other.smallest_arch())


def test_wilson_interval_is_honest_at_small_samples_and_perfect_rates():
    from dna_deploy.latency.validate import fidelity_metrics, wilson_interval

    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and lo == pytest.approx(0.9287, abs=1e-3)  # 50/50 does not prove 100 %
    lo, hi = wilson_interval(99, 100)
    assert lo == pytest.approx(0.9455, abs=1e-3) and hi == pytest.approx(0.9982, abs=1e-3)
    m = fidelity_metrics([1.0, 1.09, 0.8, 1.02], [1.0, 1.0, 1.0, 1.0])
    assert m["within_10pct"] == 0.75 and m["within_10pct_ci95"][0] < 0.75 < m["within_10pct_ci95"][1]
    q = m["rel_error_quantiles"]  # 4 errors cannot bound 90 %: their extremes, covering 3/5
    assert q["q05"] == pytest.approx(-0.2) and q["q95"] == pytest.approx(0.09) and q["coverage"] == pytest.approx(0.6)
    assert q["q50"] == pytest.approx(0.01)


def test_prediction_bounds_cover_90_percent_of_new_errors_at_any_sample_size():
    """Split-conformal bounds from n held-out errors hold 90 % of fresh errors on average, where
    sample percentiles of few errors hold far less (8 errors: about 70 %)."""
    import numpy as np

    from dna_deploy.latency.validate import prediction_bounds

    rng = np.random.default_rng(0)
    for n in (19, 40, 100):
        hits, naive = [], []
        for _ in range(2000):
            e, fresh = rng.standard_normal(n), rng.standard_normal()
            lo, hi, coverage = prediction_bounds(e)
            hits.append(lo <= fresh <= hi)
            naive.append(np.quantile(e, 0.05) <= fresh <= np.quantile(e, 0.95))
        assert coverage >= 0.9 and np.mean(hits) >= 0.88, (n, np.mean(hits))
    lo, hi, coverage = prediction_bounds(np.arange(8.0))
    assert (lo, hi) == (0.0, 7.0) and coverage == pytest.approx(7 / 9)
    e = rng.standard_normal((4000, 8))
    naive = np.mean([np.quantile(x[:8], 0.05) <= f <= np.quantile(x[:8], 0.95) for x, f in zip(e, rng.standard_normal(4000))])
    assert naive < 0.8  # what the sample percentiles of 8 errors held


@pytest.mark.slow
def test_litert_models_are_built_in_parallel_workers_and_reused_on_resume(tmp_path, monkeypatch):
    """LiteRT conversions (seconds each) run in spawned worker processes, for op models and for
    validation networks; a rerun reuses the networks already converted instead of converting again."""
    from dna_deploy.latency import artifacts
    from dna_deploy.runtimes import runner_class
    from dna_deploy.space import SearchSpace

    reason = runner_class("litert").unavailable_reason("cpu")
    if reason:
        pytest.skip(f"litert: {reason}")
    # choices far apart in cost, so that the calibration's slope stays positive on a busy machine
    # (k3e3 vs k5e3 at 8 channels differed by less than one round's noise: a negative fit, once)
    space = SearchSpace.from_dict({"name": "one-block", "input_size": 32, "num_classes": 10, "stem_channels": 16,
                                   "stem_stride": 1, "first_channels": 16, "head_channels": 32,
                                   "blocks": [{"out_channels": 32, "stride": 2, "layers": 2, "choices": ["k3e1", "k7e6"]}]})
    # any number of jobs goes to the workers here (by default a few per worker first, to pay for their start)
    monkeypatch.setattr(artifacts, "MIN_JOBS_PER_WORKER", 1)
    table_path = tmp_path / "litert.json"
    profile(space, load_device("x86-cpu-litert"), table_path, rounds=1, runs_per_round=5, max_extra_rounds=0,
            show_progress=False, warmup_s=0.0)
    table = LatencyTable.load(table_path)
    assert set(table.entries) == {s.key for s in space.all_layer_specs()} and table.statistic == "p10_ms"
    work = tmp_path / "val"
    n = space.count_architectures()  # all 6 networks of this space
    validate_table(table_path, space, samples=n, show_progress=False, rounds=1, runs_per_round=5, max_extra_rounds=1, work_dir=work,
                   warmup_s=0.0)
    built = json.loads((work / "artifacts.json").read_text())
    assert len(built) == n and all(Path(p).is_file() for p in built.values())
    stamps = {p: Path(p).stat().st_mtime_ns for p in built.values()}
    (work / "measurements.json").unlink()  # timings gone: the networks are timed again, not converted again
    report = validate_table(table_path, space, samples=n, show_progress=False, rounds=1, runs_per_round=5, max_extra_rounds=1,
                            work_dir=work, warmup_s=0.0)
    assert {p: Path(p).stat().st_mtime_ns for p in built.values()} == stamps
    assert report["statistic"] == "p10_ms" and report["networks"] == n


def test_a_litert_table_for_the_builtin_kernels_times_the_graph_as_trained(tmp_path):
    """A device that runs LiteRT's builtin kernels gets op models with the 7x7 depthwise as trained
    (the split is for XNNPACK: nn/rewrite.py), its table records that recipe, and on this host it is
    not foreign; the same table with the XNNPACK recipe would be."""
    from dna_deploy.host import runtime_versions
    from dna_deploy.runtimes import runner_class
    from dna_deploy.space import SearchSpace

    reason = runner_class("litert").unavailable_reason("cpu")
    if reason:
        pytest.skip(f"litert: {reason}")
    from ai_edge_litert.interpreter import Interpreter

    space = SearchSpace.from_dict({"name": "k7", "input_size": 16, "num_classes": 10, "stem_channels": 8,
                                   "stem_stride": 1, "first_channels": 8, "head_channels": 16,
                                   "blocks": [{"out_channels": 8, "stride": 2, "layers": 1, "choices": ["k7e3"]}]})
    spec = tmp_path / "builtin.yaml"
    spec.write_text("name: litert-builtin\nruntime: litert\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch: 1\n"
                    "op_resolver: builtin\n")
    table = profile(space, load_device(str(spec)), tmp_path / "t.json", rounds=1, runs_per_round=3, max_extra_rounds=0,
                    show_progress=False, warmup_s=0.0, granularity="block")
    assert table.meta["versions"]["dna-deploy litert graph"].startswith("2: as trained")
    assert table.foreign_reasons() == []
    assert runtime_versions("litert", "builtin") != runtime_versions("litert")  # an XNNPACK table is another graph
    manifest = json.loads((tmp_path / "t.bundle" / "manifest.json").read_text())
    block = next(e for k, e in manifest["entries"].items() if k.startswith("block:"))
    it = Interpreter(model_path=str(tmp_path / "t.bundle" / block["file"]))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    kernels = [tuple(tensors[op["inputs"][1]]["shape"][1:3]) for op in it._get_ops_details()
               if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert kernels == [(7, 7)]
