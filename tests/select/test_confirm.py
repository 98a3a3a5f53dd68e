"""The search confirms its best candidates on this machine (issue 34): exported as they ship (random
weights), timed in turn with verify's timing, and the best-rated one measured within every budget
ships. The candidates differ by design (the best-rated is the largest network, the next one has its
costliest block at its smallest), the budget is set between the two measurements, and the verdict is
judged from the recorded measurements, so no assertion depends on how fast this machine runs."""

import json
import re
from pathlib import Path

import pytest

from dna_deploy.deploy.confirm import confirm_candidates
from dna_deploy.io import shipped_dir
from dna_deploy.runtimes.base import Runner
from dna_deploy.select.search import run_search
from dna_deploy.settings import SearchSettings

DEVICE = "x86-cpu-onnxruntime"


@pytest.fixture
def table_here():
    """The shipped ONNX Runtime table of the tiny space, as if profiled on this machine with these
    versions, and calibrated to predict a thousandth of its sums: every network fits any budget by
    prediction, so only the measurement decides."""
    from dna_deploy.host import host_description, runtime_versions
    from dna_deploy.latency.table import LatencyTable

    t = LatencyTable.load(shipped_dir("latency_tables") / f"{DEVICE}__tiny.json")
    t.meta = {**t.meta, "host": host_description(), "versions": runtime_versions("onnxruntime", None)}
    t.meta.pop("speed_probe", None)
    t.calibration = {**(t.calibration or {}), "a": 1e-3, "b": 0.0}
    assert not t.foreign_reasons()
    return t


def ratings_two_apart(space) -> dict:
    """Best rating: the largest candidate of every block. Next: the same with its costliest block
    (by MACs saved) at its smallest candidate; every other candidate rates far worse."""
    blocks, saved = [], []
    for b in range(len(space.blocks)):
        cands = {}
        for ops in space.block_candidates(b):
            specs = space.block_specs(b, ops)
            cands[".".join(map(str, ops))] = {"loss": 1.0, "macs": sum(s.macs for s in specs),
                                              "params": sum(s.params for s in specs)}
        big = max(cands, key=lambda n: cands[n]["macs"])
        small = min(cands, key=lambda n: cands[n]["macs"])
        cands[big]["loss"] = 0.0
        saved.append((cands[big]["macs"] - cands[small]["macs"], b, small))
        blocks.append({"block": b, "complete": True, "candidates": cands})
    _, b, small = max(saved)
    blocks[b]["candidates"][small]["loss"] = 0.001
    return {"format": "dna-deploy-ratings/1", "space": space.name, "space_fingerprint": space.fingerprint,
            "metric": "synthetic", "blocks": blocks}


def test_confirmation_ships_the_next_candidate_when_the_first_misses_and_never_times_twice(tiny, table_here, tmp_path,
                                                                                         monkeypatch):
    ratings = ratings_two_apart(tiny)
    work = tmp_path / "confirm"
    first = run_search(tiny, ratings, [table_here], [1000.0], SearchSettings(top_k=1, confirm_top=2),
                       output=tmp_path / "search.json", pareto_path=tmp_path / "pareto", confirm=confirm_candidates, confirm_dir=work,
                       show_progress=False)
    c = first["confirmation"]
    assert [x["rank"] for x in c["candidates"]] == [1, 2] and c["shipped"] == 1 and c["timed"] == 2
    assert first["results"][0]["arch"] == str(tiny.largest_arch()) and first["results"][0]["rank_by_rating"] == 1
    measured = [x["measured_ms"][DEVICE] for x in c["candidates"]]
    assert all(m > 0 for m in measured) and c["statistic"] == "p10_ms"
    assert (tmp_path / "pareto.png").is_file() and json.loads((work / "timings.json").read_text())["timings"]
    assert not (work / "candidates").exists()  # the exports are removed once timed; the timings are kept
    if not measured[1] < measured[0]:
        pytest.skip(f"the smaller network did not measure faster here ({measured}): this machine is too noisy now")

    rounds = []
    monkeypatch.setattr(Runner, "time_round", lambda self, *a, **k: rounds.append(self) or pytest.fail("timed again"))
    budget = (measured[0] + measured[1]) / 2  # between the two measurements
    second = run_search(tiny, ratings, [table_here], [budget], SearchSettings(top_k=1, confirm_top=2),
                        output=tmp_path / "search2.json", confirm=confirm_candidates, confirm_dir=work, show_progress=False)
    c = second["confirmation"]
    assert rounds == [] and c["timed"] == 0 and c["reused"] == 2
    assert c["shipped"] == 2 and [x["meets"][DEVICE] for x in c["candidates"]] == [False, True]
    assert second["results"][0]["arch"] == c["candidates"][1]["arch"] and second["results"][0]["confirm_rank"] == 2
    assert second["results"][0][f"measured_ms:{DEVICE}"] == measured[1]
    assert re.search(r"#2 is the best-rated candidate (clearly|measured) within every budget", c["why"]) and "#1:" in c["why"]

    from dna_deploy.errors import InfeasibleBudget

    with pytest.raises(InfeasibleBudget, match=r"none of the 2 candidates measured within every budget.*Try: a budget "
                                               r"of at least .* ms on x86-cpu-onnxruntime"):
        run_search(tiny, ratings, [table_here], [min(measured) / 2], SearchSettings(top_k=1, confirm_top=2),
                   output=tmp_path / "search3.json", confirm=confirm_candidates, confirm_dir=work, show_progress=False)
    assert json.loads((tmp_path / "search3.json").read_text())["confirmation"]["shipped"] is None


def test_the_ladder_reaches_below_the_budget_without_giving_up_the_optimum(tiny):
    """The confirmed candidates: the exact optimum under the budget first, then the best under rungs
    2.5 % apart below it, each a different network, best rating first; step 0 gives the K best."""
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.select.search import confirmation_ladder, search, synthetic_ratings

    table = LatencyTable.load(shipped_dir("latency_tables") / f"{DEVICE}__tiny.json")
    ratings = synthetic_ratings(tiny, seed=0)
    lo, hi = (table.predict(tiny, a)["predicted_ms"] for a in (tiny.smallest_arch(), tiny.largest_arch()))
    budget = (lo + hi) / 2
    key = f"latency_ms:{DEVICE}"
    ladder = confirmation_ladder(tiny, ratings, [table], [budget], SearchSettings(confirm_step=0.025), 8)
    best = search(tiny, ratings, [table], [budget], top_k=8)
    assert len(ladder) == 8 and len({r["arch"] for r in ladder}) == 8
    assert ladder[0]["arch"] == best[0]["arch"]  # nothing better-rated is given up unless it measures over
    assert [r["rating"] for r in ladder] == sorted(r["rating"] for r in ladder)
    for r in ladder:  # each within its rung
        assert r[key] <= budget * r["rung_budget_scale"] + 1e-12
    assert min(r[key] for r in ladder) <= budget * (1 - 7 * 0.025) + 1e-12
    assert max(r[key] for r in best) > budget * 0.99  # why the rungs: the K best crowd at the budget
    top = confirmation_ladder(tiny, ratings, [table], [budget], SearchSettings(confirm_step=0.0), 8)
    assert [r["arch"] for r in top] == [r["arch"] for r in best]
    # rungs that would reach the whole budget stop the ladder instead of searching under 0 ms
    short = confirmation_ladder(tiny, ratings, [table], [hi], SearchSettings(confirm_step=0.2), 8)
    assert 1 <= len(short) <= 5 and all(r["rung_budget_scale"] > 0 for r in short)


def test_confirmation_refuses_a_table_of_another_machine(tiny, tmp_path):
    from dna_deploy.errors import DataError
    from dna_deploy.latency.table import LatencyTable

    t = LatencyTable.load(shipped_dir("latency_tables") / f"{DEVICE}__tiny.json")
    t.meta = {**t.meta, "host": {**t.meta.get("host", {}), "cpu": "a CPU this is not"}}
    with pytest.raises(DataError, match="describes another"):
        run_search(tiny, ratings_two_apart(tiny), [t], [1000.0], SearchSettings(confirm_top=2),
                   confirm=confirm_candidates, confirm_dir=tmp_path / "c", show_progress=False)


def test_a_pipeline_with_confirm_top_resumes_without_timing_again(tiny, table_here, tmp_path, monkeypatch):
    """The search stage killed after two passes over its candidates keeps their rounds: run again,
    it continues them (never repeats one), and once they are finished it times nothing."""
    from dna_deploy.pipeline.config import load_pipeline
    from dna_deploy.pipeline.stages import RunContext, SearchStage

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"name: c\ndata: mnist\nspace: tiny\ndevices:\n  - {{device: {DEVICE}, budget_ms: 1000}}\n")
    out = tmp_path / "run"
    (out / "tables").mkdir(parents=True)
    table_here.save(out / "tables" / f"{DEVICE}__tiny.json")
    (out / "ratings.json").write_text(json.dumps(ratings_two_apart(tiny)))
    logs = []
    ctx = RunContext(load_pipeline(pipeline), out, show_progress=False, log=logs.append)
    assert SearchStage.search_settings(ctx).confirm_top == 4  # unset: on, where timing is cheap (a CPU runtime here)
    pipeline.write_text(pipeline.read_text() + "search: {top_k: 1, confirm_top: 2}\n")
    ctx = RunContext(load_pipeline(pipeline), out, show_progress=False, log=logs.append)

    real_round, calls = Runner.time_round, []

    def counted(self, *a, **k):
        if len(calls) == 4:  # two passes over the two candidates, then the run is killed
            raise KeyboardInterrupt
        calls.append(Path(self.model).parent.parent.name)
        return real_round(self, *a, **k)

    monkeypatch.setattr(Runner, "time_round", counted)
    with pytest.raises(KeyboardInterrupt):
        SearchStage().run(ctx)
    saved = json.loads((out / "confirm" / "timings.json").read_text())["timings"]
    assert sorted(len(e["rounds"]) for e in saved.values()) == [2, 2] and len(set(calls)) == 2

    calls.clear()
    monkeypatch.setattr(Runner, "time_round", lambda self, *a, **k: calls.append(1) or real_round(self, *a, **k))
    res = SearchStage().run(ctx)
    c = res["confirmation"]
    total = sum(len(e["rounds"]) for e in json.loads((out / "confirm" / "timings.json").read_text())["timings"].values())
    assert len(calls) == total - 4 and c["shipped"] == 1 and c["timed"] == 2  # continued, none repeated
    assert any("confirming 2 candidates" in m for m in logs) and any("confirmation took" in m for m in logs)

    calls.clear()
    res = SearchStage().run(ctx)  # run again (a later stage changed, a larger top_k...): nothing timed
    assert calls == [] and res["confirmation"]["reused"] == 2 and res["confirmation"]["timed"] == 0


@pytest.mark.parametrize("field, value, message", [("confirm_top", 101, "at most 100"),
                                                   ("confirm_step", 0.5, "from 0 to 0.2"),
                                                   ("confirm_step", -0.01, "from 0 to 0.2"),
                                                   ("confirm_step", "2%", "from 0 to 0.2")])
def test_confirmation_settings_out_of_range_are_refused_in_one_line(field, value, message):
    from dna_deploy.errors import DataError

    with pytest.raises(DataError, match=message):
        SearchSettings(**{field: value})
