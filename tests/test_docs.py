"""The README and docs/ hold: every measured figure names its source in bench/results/ and equals
it, no measured figure goes without a source, and the README's usage runs as one chain.

A figure's source is an invisible marker right after it, `<!-- FILE.json: key/path -->`, with
optional ` ÷ other/path` (a ratio of two values) and ` x100` (a fraction shown as a percentage). A
key may itself hold a `/` or a `.`: at each level the longest key that fits is taken. The figure
must equal the source rounded to the decimals shown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

NUMBER = r"[−-]?\d[\d,]*(?:\.\d+)?"
MARKER = re.compile(r"(?P<fig>" + NUMBER + r")<!--\s*(?P<file>[\w.\-]+\.json):\s*(?P<path>.+?)"
                    r"(?:\s+÷\s+(?P<div>.+?))?(?:\s+(?P<scale>x100))?\s*-->")
ANY_MARKER = re.compile(r"<!--\s*[\w.\-]+\.json:.*?-->")

# Measured-looking figures that are not measurements: thresholds, tolerances, defaults and the
# like, each written the way the docs write it. Anything else with a unit needs a marker.
NOT_MEASURED = [
    r"±\s?\d+ %",                                   # tolerances: within ±10 %
    r"\b90 %",                                      # the prediction intervals' level
    r"\b95 % (?:bootstrap intervals?|CI|intervals?)",  # confidence intervals' level
    r"\b(?:5|15|7|10) % (?:tolerance|of (?:its|the) fastest)",  # quiet-round / probe rules
    r"within (?:5|15) %",
    r"\bmore than 10 %",
    r"\b0\.(?:25|1|02|01) s\b",                     # warm-up settings
    r"\bevery 30 s\b",                              # the progress log period
    r"\(?2\.5 %\)?(?= of the budget| apart|\) of the budget)|× 2\.5 %",  # the confirmation's rung spacing (confirm_step)
    r"\b1\.15× the mean",                            # rating's balance rule (rate.MAX_IMBALANCE)
    r"\b\d+(?:\.\d+)? ms\b(?= \()?(?=.*(?:budget|at most|-b ))",  # budgets a user chooses
]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def resolve(data, path: str):
    rest = path
    while rest:
        if isinstance(data, list):
            key, _, rest = rest.partition("/")
            data = data[int(key)]
            continue
        fits = [k for k in data if rest == k or rest.startswith(k + "/")]
        if not fits:
            raise KeyError(f"{path!r}: no key fits {rest!r} (keys: {sorted(data)[:12]})")
        key = max(fits, key=len)
        data, rest = data[key], rest[len(key) + 1:]
    return data


def _number(text: str) -> tuple[float, int]:
    text = text.replace("−", "-").replace(",", "")
    return float(text), len(text.partition(".")[2])


def markers():
    for doc in DOCS:
        for m in MARKER.finditer(_text(doc)):
            yield doc.relative_to(ROOT), m


def test_markers_are_well_formed():
    """Every marker sits right after a figure (a marker that names nothing checks nothing)."""
    for doc in DOCS:
        text = _prose(_text(doc))
        assert len(ANY_MARKER.findall(text)) == len(MARKER.findall(text)), \
            f"{doc.name}: a source marker does not follow a figure directly"


def test_every_figure_equals_its_source():
    cache: dict[str, object] = {}
    checked, wrong = 0, []
    for doc, m in markers():
        file = RESULTS / m["file"]
        assert file.is_file(), f"{doc}: {m['file']} is not in bench/results/"
        data = cache.setdefault(m["file"], json.loads(file.read_text()))
        value = resolve(data, m["path"])
        if m["div"]:
            value = value / resolve(data, m["div"])
        if m["scale"]:
            value *= 100
        shown, decimals = _number(m["fig"])
        if abs(shown - value) > 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12:
            wrong.append(f"{doc}: {m['fig']} but {m['file']}: {m['path']} gives {value!r}")
        checked += 1
    assert checked > 50, "the docs' figures lost their source markers"
    assert not wrong, "figures that differ from their source:\n" + "\n".join(wrong)


UNIT = re.compile(r"(?<![\w.\-/])(" + NUMBER + r")\s?(ms|s|%|img/s|candidates/s|h|MB|GB|x|×)(?![\w/])")


def test_no_measured_figure_without_a_source():
    """A number with a unit of measure (ms, s, %, img/s, MB, x) in the prose is a measurement
    unless it is a threshold or setting listed in NOT_MEASURED; a measurement needs a marker."""
    allowed = re.compile("|".join(NOT_MEASURED))
    loose = []
    for doc in DOCS:
        for line in _prose(_text(doc)).splitlines():
            bare = ANY_MARKER.sub("", MARKER.sub("", line))
            bare = allowed.sub("", bare)
            for m in UNIT.finditer(bare):
                loose.append(f"{doc.relative_to(ROOT)}: {m.group(0)!r} in {line.strip()[:100]!r}")
    assert not loose, "figures without a bench/results source (add a marker or drop them):\n" + "\n".join(loose)


def test_shipped_tables_sum_10th_percentiles():
    """docs/concepts.md and docs/targets.md say every shipped table sums p10_ms."""
    tables = sorted((ROOT / "latency_tables").glob("*.json"))
    assert tables
    for t in tables:
        assert json.loads(t.read_text())["meta"]["statistic"] == "p10_ms", t.name


def chain_script() -> str:
    """The README's usage: every ```bash block right after a `<!-- chain -->` line, in order."""
    blocks = re.findall(r"<!-- chain -->\s*\n```bash\n(.*?)```", _text(ROOT / "README.md"), flags=re.S)
    return "\n".join(blocks)


def test_readme_chain_is_found():
    script = chain_script()
    assert script.count("dna-deploy ") >= 8, "the README's chain blocks lost their <!-- chain --> markers"
    for step in ("profile ", "teacher train", "train ", "rate ", "search ", "retrain ", "export ", "verify "):
        assert f"dna-deploy {step}" in script, f"the README's chain has no `dna-deploy {step.strip()}`"


@pytest.mark.slow
def test_readme_chain_runs(tmp_path):
    """Run the README's chain as written, in a fresh folder, each command on the last one's output."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "dna-deploy").exists() and not shutil.which("dna-deploy"):
        pytest.skip("the dna-deploy command is not installed next to this interpreter")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "120"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", chain_script()], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, f"the README's chain failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    verify = json.loads((tmp_path / "runs" / "export" / "verify.json").read_text())
    assert verify["arch"] == json.loads((tmp_path / "runs" / "search.json").read_text())["results"][0]["arch"]


def test_make_demo_ends_with_the_report_and_what_to_run_next():
    """`make demo` prints where the report is and the two commands a user runs next; the paths it
    names are the ones the quickstart writes."""
    makefile = _text(ROOT / "Makefile")
    demo = re.search(r"^demo:.*?\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert demo, "no demo target"
    lines = demo.group(1).splitlines()
    assert "quickstart --out $(OUT)" in lines[0]
    echoed = "\n".join(lines[1:])
    assert "$(OUT)/report.md" in echoed and "Next" in echoed
    commands = re.findall(r"^\t@echo \"  (dna-deploy .*?|cp .*?)\s+#", "\n".join(lines[1:]), flags=re.M)
    assert len(commands) == 2, echoed
    assert "examples/quickstart.yaml" in commands[1] and (ROOT / "examples" / "quickstart.yaml").is_file()
    # the run folder's files the first command reads (pipeline/stages.py writes them there)
    stages = _text(ROOT / "dna_deploy" / "pipeline" / "stages.py")
    assert "$(OUT)/ratings.json" in commands[0] and '"ratings.json"' in stages
    assert "$(OUT)/tables/x86-cpu-onnxruntime__tiny.json" in commands[0] and 'self.out / "tables"' in stages
