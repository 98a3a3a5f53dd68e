"""Building the models that profiling and validation time: one-layer models and whole networks,
exported and converted as `export` does, in parallel worker processes where conversion is slow.

A LiteRT conversion (onnx2tf + TensorFlow) takes seconds and one core; a 2-core host validating
200 networks spends most of its time there. Jobs are plain dicts, so they pickle into spawned
workers (never forked: TensorFlow and torch threads do not survive a fork), and each worker imports
torch and the converter once for all the jobs it gets.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable


def layer_job(spec: dict, input_shape: list[int], *, runtime: str, precision: str, work_dir: Path, name: str,
              op_resolver: str | None = None) -> dict:
    return {"kind": "layer", "spec": spec, "input_shape": list(input_shape), "runtime": runtime, "precision": precision,
            "work_dir": str(work_dir), "name": name, "op_resolver": op_resolver}


def block_job(specs: list[dict], input_shape: list[int], *, runtime: str, precision: str, work_dir: Path, name: str,
              op_resolver: str | None = None) -> dict:
    """One block candidate as one model: its layers in sequence (a block-level table entry)."""
    return {"kind": "block", "specs": specs, "input_shape": list(input_shape), "runtime": runtime,
            "precision": precision, "work_dir": str(work_dir), "name": name, "op_resolver": op_resolver}


def network_job(space: dict, arch: str, batch: int, *, runtime: str, precision: str, work_dir: Path, name: str,
                op_resolver: str | None = None) -> dict:
    return {"kind": "network", "space": space, "arch": arch, "batch": batch, "runtime": runtime, "precision": precision,
            "work_dir": str(work_dir), "name": name, "op_resolver": op_resolver}


def share_conversions(job: dict, share: dict | None) -> dict:
    """`job`, converted together with the other precisions `share` lists ({"dir": folder,
    "precisions": [...]}) when its runtime converts several at once: the fp32 and int8 LiteRT tables
    of one pipeline time the same op models and validation networks (same specs, same seeded
    weights), and one onnx2tf run writes both precisions for little more than one. The first job
    of a model converts all and leaves the others in share's folder, keyed by what shapes the model;
    the other table's job takes its file from there."""
    if not share or job["precision"] not in share["precisions"] or len(share["precisions"]) < 2:
        return job
    return {**job, "share": {"dir": str(share["dir"]), "precisions": sorted(share["precisions"])}}


def _shared_key(job: dict) -> str:
    """What shapes a model apart from its precision: its layers or network, input, runtime, kernels,
    and the tool and converter versions that built it."""
    from dna_deploy import __version__
    from dna_deploy.host import runtime_versions
    from dna_deploy.io import fingerprint

    what = {k: v for k, v in job.items() if k not in ("precision", "work_dir", "name", "share")}
    return fingerprint({**what, "tool": __version__, "versions": runtime_versions(job["runtime"], job.get("op_resolver"))})


def build_artifact(job: dict) -> str:
    """One job -> the path of the runtime's artifact (weights seeded, so a rebuild is identical)."""
    import torch

    from dna_deploy.io import atomic_write_bytes
    from dna_deploy.runtimes import runner_class
    from dna_deploy.space import LayerSpec

    cls = runner_class(job["runtime"])
    share = job.get("share") if cls.converts_precisions_together else None
    if share:  # converted with the other precisions before: take this one's file
        folder = Path(share["dir"]) / _shared_key(job)
        kept = folder / f"{job['precision']}{cls.artifact_suffix}"
        if kept.is_file():
            return str(atomic_write_bytes(Path(job["work_dir"]) / f"{job['name']}_{job['precision']}{cls.artifact_suffix}",
                                          kept.read_bytes()))

    torch.manual_seed(0)
    if job["kind"] == "layer":
        from dna_deploy.nn.modules import build_layer

        module, shape = build_layer(LayerSpec(**job["spec"])), job["input_shape"]
    elif job["kind"] == "block":
        from dna_deploy.nn.modules import build_block

        module, shape = build_block([LayerSpec(**s) for s in job["specs"]]), job["input_shape"]
    else:
        from dna_deploy.nn.builder import build_network
        from dna_deploy.space import SearchSpace

        space = SearchSpace.from_dict(job["space"])
        module = build_network(space, job["arch"])
        shape = [job["batch"], space.in_channels, space.input_size, space.input_size]
    example, work = torch.randn(*shape), Path(job["work_dir"])
    if not share:
        return str(cls.prepare_artifact(module.eval(), example, work, name=job["name"], precision=job["precision"],
                                        op_resolver=job.get("op_resolver")))
    made = cls.prepare_artifacts(module.eval(), example, work, name=job["name"], precisions=tuple(share["precisions"]),
                                 op_resolver=job.get("op_resolver"))
    for precision, path in made.items():
        if precision != job["precision"]:
            atomic_write_bytes(folder / f"{precision}{cls.artifact_suffix}", Path(path).read_bytes())
            Path(path).unlink()
    return str(made[job["precision"]])


def _worker_init() -> None:
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = "1"  # one worker per core
    import torch

    torch.set_num_threads(1)


_heap_frozen = False


def _build_in_worker(job: dict) -> str:
    """build_artifact, then (once, after the first job has imported torch, TensorFlow and onnx2tf)
    move every surviving object out of the garbage collector's reach. TFLite's SavedModel converter
    (the int8 path) runs a full gc.collect() per conversion, which walked the ~650k objects of those
    imports each time: 0.3 s of a 1.3 s int8 block-model conversion here. Frozen, it walks only what
    later conversions create (~20k objects); nothing they leave is frozen, so it is still freed."""
    global _heap_frozen
    path = build_artifact(job)
    if not _heap_frozen:
        import gc

        gc.collect()
        gc.freeze()
        _heap_frozen = True
    return path


# A spawned worker pays ~10 s to import torch and TensorFlow, which this process has usually paid
# already: fewer jobs than this per worker are converted here, one after another.
MIN_JOBS_PER_WORKER = 4
# Fast builds (an ONNX export, ~0.08 s for a tiny block model) go to workers only when there are
# enough of them to repay a worker's ~5 s torch import: a block table's 600 op models, not a
# layer table's 60.
MIN_FAST_JOBS_FOR_WORKERS = 200


def default_workers(jobs: int) -> int:
    """One worker per usable core (at most 8), and only as many as get MIN_JOBS_PER_WORKER jobs each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, jobs // MIN_JOBS_PER_WORKER))


def build_artifacts(jobs: Iterable[tuple[str, dict]], *, slow: bool, on_done: Callable[[str, str], None],
                    workers: int | None = None) -> None:
    """Build every (key, job); on_done(key, path) is called in this process as each finishes (so
    the caller can record it for a resume). Slow builds (a LiteRT conversion), and fast ones by the
    hundred, run in worker processes; the rest here, one after another."""
    from concurrent.futures.process import BrokenProcessPool

    from dna_deploy.errors import DataError

    jobs = list(jobs)
    workers = workers or default_workers(len(jobs))
    if not (slow or len(jobs) >= MIN_FAST_JOBS_FOR_WORKERS) or workers < 2:
        for key, job in jobs:
            on_done(key, build_artifact(job))
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    try:
        futures = {pool.submit(_build_in_worker, job): key for key, job in jobs}
        for f in as_completed(futures):
            on_done(futures[f], f.result())  # finished models are recorded as they come: a rerun keeps them
    except BrokenProcessPool:
        raise DataError(f"a model-building worker died (out of memory?) with {workers} workers; rerun to resume with "
                        "the models already built, after freeing memory") from None
    finally:  # on a failure, drop the queued jobs instead of converting them for nothing
        pool.shutdown(wait=True, cancel_futures=True)
