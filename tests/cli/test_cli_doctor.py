"""`dna-deploy doctor` says what this machine can do, and how to install what it lacks (issue 33)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.host import host_description
from dna_deploy.runtimes import RUNTIME_NAMES

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_doctor_json_report():
    r = runner.invoke(app, ["doctor", "-f", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    here = host_description()
    assert {k: rep["host"][k] for k in ("cpu", "cores", "machine")} == {k: here[k] for k in ("cpu", "cores", "machine")}
    assert [x["runtime"] for x in rep["runtimes"]] == list(RUNTIME_NAMES)
    ort = next(x for x in rep["runtimes"] if x["runtime"] == "onnxruntime")
    assert "cpu" in ort["usable_on"] and ort["versions"]["onnxruntime"]  # a dependency: always installed
    assert len(rep["tables"]) >= 7 and all(t["fits"] == (not t["why_not"]) for t in rep["tables"])
    for t in rep["tables"]:
        if t["fits"]:
            continue
        assert t["why_not_short"] and t["instead"].startswith("the pipeline profiles")
    quick = next(d for d in rep["data"] if d["pipeline"] == "examples/quickstart.yaml")
    assert quick["data"] == "mnist" and quick["found"] is True
    for item in [*rep["runtimes"], *rep["tools"], *rep["data"]]:  # every "missing" says how to install it
        missing = not item.get("usable_on", item.get("found", True)) if "usable_on" in item else not item["found"]
        assert (item["install"] is not None) == missing, item
    assert {t["tool"] for t in rep["tools"]} == {"adb", "ssh"}


def test_doctor_screen_shows_what_json_holds():
    rep = json.loads(runner.invoke(app, ["doctor", "-f", "json"]).output)
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    screen = _flat(r.output)
    h = rep["host"]
    assert f"{h['cores']} cores, {h['machine']}, CPU flags {h['cpu_flags_sha256']}" in screen
    for rt in rep["runtimes"]:
        assert rt["runtime"] in screen
        for package, version in rt["versions"].items():
            if version:
                assert f"{package} {version}" in screen
    fit = sum(t["fits"] for t in rep["tables"])
    assert f"{fit} of {len(rep['tables'])} fit this host" in screen
    for t in rep["tables"]:
        assert t["table"].removesuffix(".json") in screen
        for reason in t["why_not_short"]:
            assert _flat(reason) in screen
    installs = [x["install"] for x in [*rep["runtimes"], *rep["tools"], *rep["data"]] if x["install"]]
    installs += [rep["gpu"]["install"]] if rep["gpu"]["install"] else []
    for line in installs:  # bracketed extras ('dna-deploy[tensorrt]') printed, not eaten as markup
        assert f"-> {_flat(line)}" in screen, line
    assert "quickstart.yaml" in screen and "mnist" in screen
