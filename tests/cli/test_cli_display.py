"""What people read: nothing cut off, nothing swallowed as markup (issue 33)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dna_deploy.cli import common
from dna_deploy.cli.app import app

runner = CliRunner()


def test_devices_list_keeps_bracketed_install_hints():
    """rich reads "[tensorrt]" as markup; the table must print it."""
    rows = json.loads(runner.invoke(app, ["devices", "list", "-f", "json"]).output)
    hints = [r["why not"] for r in rows if "[" in r["why not"]]
    if not hints:
        pytest.skip("every device's runtime is usable here: no install hint to print")
    r = runner.invoke(app, ["devices", "list"], terminal_width=200)
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    for hint in hints:
        extra = hint[hint.index("[") : hint.index("]") + 1]  # e.g. [tensorrt]
        assert extra in flat, f"{extra} swallowed: {flat[:400]}"


def _result(arch: str, devices: list[str]) -> dict:
    row = {"arch": arch, "rating": 7.99, "mmacs": 3.9, "params_m": 0.14, "block_ratings": [1.0]}
    for d in devices:
        row |= {f"latency_ms:{d}": 0.2673, f"latency_ms_90:{d}": [0.25, 0.28], f"latency_interval_coverage:{d}": 0.9,
                f"budget_holds_at_upper_end:{d}": True}
    return {"results": [row, row], "budgets_ms": {devices[0]: 0.4, **{d: None for d in devices[1:]}}}


@pytest.mark.parametrize("width", [200, 80, 40])
def test_search_table_folds_instead_of_cropping(width, monkeypatch):
    from dna_deploy.cli.search import print_result

    arch = "k7e6.k7e6|k7e6.k7e6.k7e6.k7e6|k7e6.k7e6.k7e6.k7e6|k7e6.k7e6.k7e6.k7e6|k7e6.k7e6.k7e6.k7e6|k7e6"
    devices = ["x86-cpu-onnxruntime", "x86-cpu-litert", "pixel-cpu-litert-int8"]
    out = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=out, width=width))
    monkeypatch.setattr("dna_deploy.cli.search.console", common.console)
    print_result(_result(arch, devices))
    text = out.getvalue()
    assert "…" not in text, text
    assert max(map(len, text.splitlines())) <= width, text
    columns: dict[tuple[str, int], str] = {}  # (border, index) -> that column's text, lines joined
    for line in text.splitlines():
        for border in "│┃":
            if line.startswith(border):
                for i, cell in enumerate(line.split(border)):
                    columns[border, i] = columns.get((border, i), "") + cell.strip()
    joined = " ".join(columns.values())
    assert arch in joined, f"the architecture string is incomplete:\n{text}"
    for d in devices:
        assert d in joined, f"device {d} is incomplete:\n{text}"
