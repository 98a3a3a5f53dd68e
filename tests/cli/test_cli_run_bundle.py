"""run-bundle says when the bundle's device spec cannot be this machine (issue 33)."""

from __future__ import annotations

import platform

import yaml
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.host import host_description
from dna_deploy.latency.devices import DeviceSpec, host_mismatch

runner = CliRunner()


def test_host_mismatch_names_architecture_and_cores():
    here = {"machine": "x86_64", "cpu": "AMD EPYC", "cores": 2}
    pi = DeviceSpec(name="rpi5-cpu-litert", runtime="litert", threads=4, machine="aarch64")
    why = host_mismatch(pi, here)
    assert len(why) == 2 and "aarch64" in why[0] and "x86_64" in why[0] and "4 threads" in why[1] and "2 cores" in why[1]
    assert host_mismatch(DeviceSpec(name="x86", runtime="onnxruntime", threads=1, machine="x86_64"), here) == []
    assert host_mismatch(DeviceSpec(name="any", runtime="onnxruntime", threads=2), here) == []  # nothing stated


def test_spec_without_machine_keeps_its_old_dict():
    """Tables store the spec's dict; specs that do not state a machine keep the dict they had."""
    assert "machine" not in DeviceSpec(name="x", runtime="onnxruntime").to_dict()
    assert DeviceSpec.from_dict({"name": "x", "runtime": "onnxruntime", "machine": "aarch64"}).machine == "aarch64"


def test_run_bundle_warns_on_a_foreign_spec(tmp_path):
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    spec = tmp_path / "board.yaml"
    spec.write_text(yaml.safe_dump({"name": "board-cpu-onnxruntime", "runtime": "onnxruntime", "threads": 1,
                                    "machine": other}))
    r = runner.invoke(app, ["profile", "bundle", "-d", str(spec), "-s", "tiny", "-o", str(tmp_path / "b.zip")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["profile", "run-bundle", str(tmp_path / "b.zip"), "-o", str(tmp_path / "t.json"),
                            "--rounds", "1", "--runs", "2", "--warmup-s", "0", "-f", "json"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"board-cpu-onnxruntime is an {other} device; this machine is {host_description()['machine']}" in text
    assert "the table will time this machine" in text
