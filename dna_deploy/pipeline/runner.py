"""Run the stages of a checked pipeline file into one folder.

Each stage has a fingerprint of its settings, of the data, seed and space, and of the fingerprints
of the stages it depends on. A stage whose fingerprint matches the last run and whose outputs exist
is skipped; a changed stage reruns, and so does everything downstream. Long stages also resume
inside themselves (per block, per epoch, per subtree).
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from dna_deploy.io import exclusive_lock, fingerprint, read_json, shipped_dir, write_json
from dna_deploy.pipeline.config import PipelineConfig, load_pipeline
from dna_deploy.pipeline.stages import STAGES, RunContext

STATE_FILE = "pipeline_state.json"


# Under torchrun these stages run on every rank (data-parallel training, sharded rating); the
# others (tables, search, baseline, export, verify, report) on rank 0 alone.
DISTRIBUTED_STAGES = ("teacher", "train", "rate", "retrain")
HANDOFF_TIMEOUT_H = 48.0  # how long other ranks may wait for rank 0's single-process stages


class _Handoff:
    """Rank 0 tells the other ranks, stage by stage, whether to run or skip it (and the results so
    far), or that it failed. It goes through a gloo group of its own whose timeout is long: the
    other ranks wait here while rank 0 profiles tables for an hour, which a collective under the
    job's timeout (compute.timeout_min) would not survive. None outside torchrun."""

    def __init__(self):
        import datetime as dt

        import torch

        self.torch = torch
        self.group = torch.distributed.new_group(backend="gloo", timeout=dt.timedelta(hours=HANDOFF_TIMEOUT_H))

    def send(self, message: dict) -> None:
        self.torch.distributed.broadcast_object_list([message], src=0, group=self.group)

    def receive(self) -> dict:
        box = [None]
        self.torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def run_stages(cfg: PipelineConfig, out: Path, *, show_progress: bool = True, log=print) -> dict:
    """One round: every stage in order, holding the folder's lock; returns the run's summary.
    Under torchrun rank 0 decides and holds the lock; the other ranks follow its decisions."""
    from dna_deploy.distributed import dist_info

    out = Path(out)
    rank, world = dist_info()
    handoff = _Handoff() if world > 1 else None
    if rank != 0:
        return _follow(cfg, out, handoff)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(out / STATE_FILE, what="dna-deploy run"):
            result = _run_locked(cfg, out, show_progress=show_progress, log=log, handoff=handoff)
    except BaseException as e:
        if handoff is not None:  # the other ranks end with the same line instead of waiting
            handoff.send({"error": str(e).splitlines()[0] if str(e) else type(e).__name__})
        raise
    if handoff is not None:
        handoff.send({"done": True})
    return result


def _follow(cfg: PipelineConfig, out: Path, handoff: _Handoff) -> dict:
    """A rank other than 0: run the distributed stages rank 0 runs, skip the rest."""
    from dna_deploy.errors import DataError

    ctx = RunContext(cfg, out, show_progress=False, log=lambda m: None)
    while True:
        message = handoff.receive()
        if "error" in message:
            raise DataError(f"rank 0: {message['error']}")
        if message.get("done"):
            return {"output": str(out), "rank": "follower"}
        ctx.results.update(message["results"])
        stage = next(s for s in STAGES if s.name == message["stage"])
        stage.run(ctx)


def _run_locked(cfg: PipelineConfig, out: Path, *, show_progress: bool, log, handoff: _Handoff | None = None) -> dict:
    ctx = RunContext(cfg, out, show_progress=show_progress, log=log)
    state_path = out / STATE_FILE
    state = read_json(state_path, what="pipeline state") if state_path.is_file() else {"stages": {}}
    fps: dict[str, str] = {}
    for stage in STAGES:
        fp = fingerprint({"settings": stage.settings(ctx), "deps": [fps[d] for d in stage.deps],
                          "space": ctx.space.fingerprint, "data": cfg.data, "seed": cfg.seed})
        fps[stage.name] = fp
        prev = state["stages"].get(stage.name)
        if prev and prev.get("fingerprint") == fp and prev.get("finished") \
                and all((out / o).exists() for o in stage.outputs(ctx)):
            log(f"[{stage.name}] up to date, skipped")
            ctx.results[stage.name] = prev["result"]
            ctx.stage_times[stage.name] = {"seconds": prev.get("seconds"), "skipped": True}
            continue
        log(f"[{stage.name}] running")
        if handoff is not None and stage.name in DISTRIBUTED_STAGES:
            handoff.send({"stage": stage.name, "results": ctx.results})
        t0 = time.time()
        state["stages"][stage.name] = {"fingerprint": fp, "finished": False}
        write_json(state_path, state)  # a crash mid-stage leaves it unfinished, never "up to date"
        result = stage.run(ctx)
        state["stages"][stage.name] = {"fingerprint": fp, "finished": True, "seconds": time.time() - t0, "result": result,
                                       "skipped": False,
                                       "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        ctx.results[stage.name] = result
        ctx.stage_times[stage.name] = {"seconds": state["stages"][stage.name]["seconds"], "skipped": False}
        write_json(state_path, state)
    verify = ctx.results["verify"]["reports"]
    return {"output": str(out), "report": str(out / "report.md"), "results": ctx.results,
            "verify_passed": all(v["passed"] for v in verify.values()),
            "stage_seconds": {k: v.get("seconds") for k, v in ctx.stage_times.items()}}


def run_pipeline(config_path: str | Path, *, out: str | Path | None = None, show_progress: bool = True,
                 log=print) -> dict:
    """Check the whole file, then run it; with `progressive: {rounds: N}` (DNA+), round r+1 distils
    from round r's retrained winner, in out/round{r+1}/. Returns the last round's result plus every
    round's summary."""
    from dna_deploy.compute import Compute
    from dna_deploy.distributed import dist_info, init_distributed_from_env
    from dna_deploy.outputs import check_output

    cfg = load_pipeline(config_path)
    out = Path(out or cfg.output or "runs/pipeline")
    teacher = cfg.teacher
    inputs = [config_path, cfg.data, cfg.space, *(d.device for d in cfg.devices),
              *((teacher.checkpoint, teacher.weights) if teacher is not None else ())]
    # under torchrun: join the group on this rank's device before any stage (rank 0 alone checks
    # and creates the output folder; the others follow it)
    init_distributed_from_env(Compute.from_settings(cfg.compute).device, timeout_min=cfg.compute.timeout_min)
    if dist_info()[0] == 0:
        check_output(out, kind="pipeline", inputs=inputs, what="pipeline output")
    summary, result, folder = [], None, out
    for r in range(1, cfg.progressive.rounds + 1):
        cfg_r = cfg
        if r > 1:
            cfg_r = cfg.with_teacher_checkpoint(folder / "retrain" / "model.pt")
            folder = out / f"round{r}"
            log(f"[DNA+ round {r}] teacher: the round {r - 1} network")
        result = run_stages(cfg_r, folder, show_progress=show_progress, log=log)
        if dist_info()[0] != 0:  # another rank: rank 0 reports
            continue
        best = read_json(folder / "search.json", what="search result")["results"][0]
        retrained = result["results"]["retrain"]
        summary.append({"round": r, "folder": str(folder), "arch": best["arch"], "rating": best["rating"],
                        "teacher_val_accuracy": retrained.get("teacher_val_accuracy"),
                        "val_accuracy": retrained["val_accuracy"], "mmacs": best["mmacs"]})
    if dist_info()[0] != 0:
        return result
    if cfg.progressive.rounds > 1:
        write_json(out / "progressive.json", summary)
    result["rounds"] = summary
    return result


def quickstart_config() -> Path:
    return shipped_dir("examples") / "quickstart.yaml"
