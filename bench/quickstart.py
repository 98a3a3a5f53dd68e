"""How long a newcomer waits: `make demo` from a clean clone of this repository, install included,
and the quickstart pipeline's time per stage (issue 33: at most 6 minutes of pipeline on a fresh
2-core host whose shipped tables do not fit).

The clone is made from this checkout's HEAD (commit it first) into a temporary folder, with no
virtual environment, no run folder and no cache of ours: `make demo` creates the venv from the
wheels on this disk and PyPI, then runs `dna-deploy quickstart`. Whether the shipped tables fit this
host is recorded (when they do not, the tables stage profiles and validates three tables here).
No figure here is a timed assertion in a test; the docs quote bench/results/quickstart.json.

Run:  python bench/quickstart.py   (about 8 minutes on 2 cores, 2 of them installing)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dna_deploy.io import write_json


def shipped_tables_fit(python: Path, clone: Path) -> dict:
    """Per quickstart device: None when a shipped table fits this host, else why not."""
    code = ("import json\nfrom dna_deploy.latency.devices import load_device\n"
            "from dna_deploy.latency.profiler import shipped_table_for_host\nfrom dna_deploy.space import load_space\n"
            "sp = load_space('tiny')\nprint(json.dumps({d: shipped_table_for_host(load_device(d), sp)[1] for d in "
            "['x86-cpu-onnxruntime', 'x86-cpu-litert', 'x86-cpu-litert-int8']}))")
    out = subprocess.run([str(python), "-c", code], cwd=clone, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "quickstart.json")
    args = ap.parse_args()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="dna-deploy-clean-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "DNA_DEPLOY_PROGRESS": "log"}
        t0 = time.perf_counter()
        demo = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if demo.returncode != 0:
            raise SystemExit(f"make demo failed ({demo.returncode}):\n{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}")
        state = json.loads((clone / "runs" / "quickstart" / "pipeline_state.json").read_text())
        stages = {k: v["seconds"] for k, v in state["stages"].items()}
        fit = shipped_tables_fit(clone / ".venv" / "bin" / "python", clone)
        fidelity = {}
        for table in sorted((clone / "runs" / "quickstart" / "tables").glob("*.json")):
            f = (json.loads(table.read_text()).get("fidelity") or {}).get("calibrated") or {}
            fidelity[table.stem] = {k: f.get(k) for k in ("n", "within_5pct", "within_10pct", "rmspe_pct")}
        search = state["stages"]["search"]["result"]
        confirmation = search.get("confirmation") or {}
        from dna_deploy.host import host_description

        result = {"commit": commit, "uncommitted_changes": bool(dirty), "venv_reused": False,
                  "make_demo_seconds": wall, "pipeline_seconds": sum(stages.values()), "stage_seconds": stages,
                  "shipped_tables_fit": {d: why is None for d, why in fit.items()},
                  "why_not": {d: why for d, why in fit.items() if why},
                  "table_fidelity": fidelity,
                  "confirmation": {k: confirmation.get(k) for k in ("shipped", "top", "seconds", "timed")},
                  "make_demo_tail": demo.stdout.strip().splitlines()[-8:], "host": host_description(),
                  "cores": len(os.sched_getaffinity(0))}
    write_json(args.output, result)
    print(f"[quickstart] make demo {wall / 60:.1f} min, pipeline {result['pipeline_seconds'] / 60:.1f} min "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())}); wrote {args.output}")


if __name__ == "__main__":
    main()
