"""DNA rating: every candidate of every block, on held-out data, after re-estimating BatchNorm.

A candidate's rating is the distance between its block output and the teacher's feature on the
`rate` split (never the validation split), with BN statistics re-estimated for that path on
training batches (shared statistics are wrong for any single path).

Candidates of a block form a prefix tree: a layer's re-estimated statistics and outputs depend
only on the layers before it, so walking the tree depth-first computes each layer once per prefix
instead of once per candidate, and gives the same numbers as rating candidates one by one
(`rate_block_naive`, kept for the benchmark and the equality test).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import torch
from torch import nn

from dna_deploy import __version__
from dna_deploy.data import DataSplits, stack
from dna_deploy.distill.checkpoints import block_checkpoint_path, check_supernet_data
from dna_deploy.distill.student import BlockStudent, feature_distance, load_block
from dna_deploy.distill.teacher import Teacher
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, read_json, sha256_file, write_json
from dna_deploy.progress import progress_bar
from dna_deploy.settings import RATING_METRICS
from dna_deploy.space import SKIP, Op, SearchSpace, parse_op

RATINGS_FORMAT = "dna-deploy-ratings/1"
METRICS = RATING_METRICS


def _bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _recalibrate(module: nn.Module, cal: list[torch.Tensor]) -> list[torch.Tensor]:
    """Reset the module's BN statistics, re-estimate them on the calibration batches (cumulative
    average), and return the train-mode outputs (what the next layer is calibrated on)."""
    bns = _bn_layers(module)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    outs = [module(x) for x in cal]
    module.eval()
    return outs


@torch.no_grad()
def _eval(module: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    module.eval()
    return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


class _Context:
    """Inputs of one block: calibration batches and rating data already through the shared front."""

    def __init__(self, student: BlockStudent, cal_in: list[torch.Tensor], rate_in: torch.Tensor, target: torch.Tensor,
                 metric: str, channel_std: torch.Tensor | None, metrics: tuple[str, ...] = METRICS):
        self.student, self.target, self.metric, self.std, self.metrics = student, target, metric, channel_std, metrics
        self.cal = [_eval(student.adapt_in, x) for x in cal_in]  # the input adapter sees no path
        self.rate = _eval(student.adapt_in, rate_in)
        stem = student.supernet.stem
        if stem is not None:  # block 0: the stem precedes every path; re-estimated like the path
            self.cal = _recalibrate(stem, self.cal)
            self.rate = _eval(stem, self.rate)

    @torch.no_grad()
    def score(self, cal: list[torch.Tensor], rate: torch.Tensor) -> dict:
        _recalibrate(self.student.adapt_out, cal)
        out = _eval(self.student.adapt_out, rate)
        return {m: float(feature_distance(out, self.target, m, self.std)) for m in self.metrics}


def rate_block_tree(space: SearchSpace, block: int, ctx: _Context, *, on_candidate=None, skip_first: set[str] = frozenset()) -> dict:
    """Depth-first over the prefix tree; returns {candidate string: distances}."""
    b = space.blocks[block]
    layers = ctx.student.supernet.layers
    choices = [parse_op(c) for c in b.choices]
    results: dict[str, dict] = {}

    def visit(prefix: tuple[Op, ...], cal, rate):
        depth = len(prefix)
        for op in choices:
            if depth == 0 and str(op) in skip_first:
                continue
            module = layers[depth].ops[str(op)]
            cal2 = _recalibrate(module, cal)
            rate2 = _eval(module, rate)
            path = prefix + (op,)
            if depth + 1 == b.layers or b.allow_skip:
                name = ".".join(str(o) for o in path + (SKIP,) * (b.layers - depth - 1))
                results[name] = ctx.score(cal2, rate2)
                if on_candidate:
                    on_candidate(name, results[name])
            if depth + 1 < b.layers:
                visit(path, cal2, rate2)
            if depth == 0 and on_candidate:
                on_candidate(None, str(op))  # a first-layer subtree is complete

    visit((), ctx.cal, ctx.rate)
    return results


def rate_block_naive(space: SearchSpace, block: int, student: BlockStudent, cal_in, rate_in, target, channel_std) -> dict:
    """Reference: each candidate on its own (re-estimate the whole path, then evaluate)."""
    results = {}
    for ops in space.block_candidates(block):
        with torch.no_grad():
            mods = [student.supernet.stem] if student.supernet.stem is not None else []
            mods += [student.supernet.layers[i].ops[str(o)] for i, o in enumerate(ops) if not o.is_skip]
            cal = [_eval(student.adapt_in, x) for x in cal_in]
            rate = _eval(student.adapt_in, rate_in)
            for m in mods:
                cal = _recalibrate(m, cal)
                rate = _eval(m, rate)
            _recalibrate(student.adapt_out, cal)
            out = _eval(student.adapt_out, rate)
        results[".".join(map(str, ops))] = {m: float(feature_distance(out, target, m, channel_std)) for m in METRICS}
    return results


def block_inputs(teacher: Teacher, data: DataSplits, *, calib_images: int, seed: int = 0, rate_views=None):
    """Teacher features on a few training batches (BN calibration) and on the whole rate split
    (through `rate_views` first, when given: DNA++ rates on two fixed views)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=g)[:calib_images].tolist()
    x_cal = torch.stack([data.train[i][0] for i in idx])
    x_rate, _ = stack(data.rate)
    if rate_views is not None:
        x_rate = rate_views(x_rate)
    f_cal, f_rate = [], []
    for i in range(0, len(x_cal), 256):
        f_cal.append(teacher.features(x_cal[i:i + 256]))
    for i in range(0, len(x_rate), 256):
        f_rate.append(teacher.features(x_rate[i:i + 256]))
    f_cal = [torch.cat(f) for f in zip(*f_cal)]
    f_rate = [torch.cat(f) for f in zip(*f_rate)]
    return x_cal, f_cal, x_rate, f_rate


def _checkpoint_hash(supernet_dir: Path, block: int) -> str | None:
    path = block_checkpoint_path(supernet_dir, block)
    return sha256_file(path)[:16] if path.is_file() else None


def supernet_method(supernet_dir: str | Path) -> str:
    """'dna' or 'dna++', as supernet.json records (folders from before DNA++ are DNA)."""
    meta = Path(supernet_dir) / "supernet.json"
    return read_json(meta, what="supernet metadata").get("method", "dna") if meta.is_file() else "dna"


def rate_supernet(space: SearchSpace, supernet_dir: str | Path, teacher: Teacher | None, data: DataSplits,
                  out_path: str | Path, *, blocks: list[int] | None = None, metric: str = "l1-norm", calib_images: int = 256,
                  calib_batch: int = 64, seed: int = 0, resume: bool = True, show_progress: bool = True) -> dict:
    """Rate every candidate of every block; writes the rating table (and a partial file per block).

    A DNA supernet is rated against its teacher (`metric`); a DNA++ supernet against its own
    population centre on two fixed views of the rate split (metric ssl-cosine; no teacher)."""
    supernet_dir, out_path = Path(supernet_dir), Path(out_path)
    method = supernet_method(supernet_dir)
    check_supernet_data(supernet_dir, data, what="rate")
    blocks = list(range(len(space.blocks))) if blocks is None else blocks
    rate_views, swap, metrics = None, (lambda f: f), METRICS
    if method == "dna++":
        from dna_deploy.distill.selfsup import PopulationCentre, rating_views, swap_views

        aug = read_json(supernet_dir / "supernet.json", what="supernet metadata")["augmentation"]
        aug = {**aug, "scale": tuple(aug["scale"])}
        # block b needs the centres of blocks 0..b: its input and its target
        teacher = PopulationCentre(space, supernet_dir, upto=max(blocks) + 1)
        metric, metrics, swap = "ssl-cosine", ("ssl-cosine",), swap_views
        rate_views = lambda x: rating_views(x, aug, seed)  # noqa: E731
    elif teacher is None:
        raise DataError(f"{supernet_dir} was distilled from a teacher (DNA): rate it with --teacher, the same teacher")
    elif metric not in METRICS:
        raise DataError(f"unknown rating metric {metric!r}; choose {', '.join(METRICS)}")
    x_cal, f_cal, x_rate, f_rate = block_inputs(teacher, data, calib_images=calib_images, seed=seed, rate_views=rate_views)
    cb = calib_batch
    table = {"format": RATINGS_FORMAT, "method": method, "space": space.name, "space_fingerprint": space.fingerprint,
             "space_definition": space.to_dict(), "metric": metric, "calibration_seed": seed,
             "teacher_fingerprint": teacher.fingerprint, "data": {**data.summary(), "rated_on": "rate split"},
             "bn_calibration": {"images": len(x_cal), "batch": cb}, "tool_version": __version__, "blocks": []}
    if resume and out_path.is_file():
        old = read_json(out_path, what="rating table")
        same = all(old.get(k) == table[k] for k in ("space_fingerprint", "teacher_fingerprint", "metric", "calibration_seed",
                                                     "bn_calibration", "method")) \
            and (old.get("data") or {}).get("fingerprint") == data.fingerprint
        if same:  # a finished block is kept only while its checkpoint is the one it was rated from
            table["blocks"] = [b for b in old.get("blocks", []) if b.get("complete") and
                               b.get("checkpoint_sha256") == _checkpoint_hash(supernet_dir, b["block"])]
    done = {b["block"] for b in table["blocks"] if b.get("complete")}
    total = sum(space.block_candidate_count(b) for b in blocks if b not in done)
    with progress_bar(show_progress) as bar:
        task = bar.task("rating candidates", total)
        for b in blocks:
            if b in done:
                continue
            student, state = load_block(space, supernet_dir, b)
            if method == "dna" and state.get("teacher_fingerprint") != teacher.fingerprint:
                raise DataError(f"block {b} in {supernet_dir} was distilled from another teacher; rate with that teacher")
            ckpt_fp = _checkpoint_hash(supernet_dir, b)
            partial_path = out_path.with_name(f"{out_path.stem}.block{b}.partial.json")
            partial = {"checkpoint": ckpt_fp, "candidates": {}, "subtrees_done": []}
            if resume and partial_path.is_file():
                p = read_json(partial_path, what="partial ratings")
                if p.get("checkpoint") == ckpt_fp:
                    partial = p
                    bar.advance(task, len(p["candidates"]))
            cal_in = x_cal if b == 0 else f_cal[b - 1]
            rate_in = x_rate if b == 0 else f_rate[b - 1]
            ctx = _Context(student, [cal_in[i:i + cb] for i in range(0, len(cal_in), cb)], rate_in, swap(f_rate[b]), metric,
                           state.get("channel_std"), metrics)
            pending: dict[str, dict] = {}

            def on_candidate(name, value, partial=partial, pending=pending, partial_path=partial_path):
                if name is None:  # a subtree finished: persist it
                    partial["candidates"].update(pending)
                    partial["subtrees_done"].append(value)
                    pending.clear()
                    write_json(partial_path, partial)
                    return
                pending[name] = value
                bar.advance(task, info=f"block {b}")

            rate_block_tree(space, b, ctx, on_candidate=on_candidate, skip_first=set(partial["subtrees_done"]))
            cands = {}
            for ops in space.block_candidates(b):
                name = ".".join(map(str, ops))
                r = partial["candidates"][name]
                specs = space.block_specs(b, ops)
                cands[name] = {"loss": r[metric], **{f"dist_{m}": r[m] for m in metrics},
                               "macs": sum(s.macs for s in specs), "params": sum(s.params for s in specs)}
            table["blocks"] = [x for x in table["blocks"] if x["block"] != b] + [
                {"block": b, "complete": True, "checkpoint_sha256": ckpt_fp, "candidates": cands}]
            table["blocks"].sort(key=lambda x: x["block"])
            table["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            write_json(out_path, table)
            partial_path.unlink(missing_ok=True)
    table["fingerprint"] = fingerprint([b["candidates"] for b in table["blocks"]])
    write_json(out_path, table)
    return table


def load_ratings(path: str | Path, space: SearchSpace) -> dict:
    d = read_json(path, what="rating table")
    if not isinstance(d, dict) or d.get("format") != RATINGS_FORMAT:
        raise DataError(f"{path} is not a dna-deploy rating table (make one with `dna-deploy rate`)")
    if d.get("space_fingerprint") != space.fingerprint:
        raise DataError(f"rating table {path} is for space {d.get('space')!r}, not {space.name!r}")
    blocks = d.get("blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) and isinstance(b.get("block"), int)
                                               and isinstance(b.get("candidates"), dict) for b in blocks):
        raise DataError(f"rating table {path} has no valid 'blocks' list; regenerate it with `dna-deploy rate`")
    for b in blocks:
        for name, c in b["candidates"].items():
            loss = c.get("loss") if isinstance(c, dict) else None
            # a NaN or missing rating would silently reorder the search: refuse it by name
            if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
                raise DataError(f"rating table {path}: block {b['block']} candidate {name!r} has rating {loss!r}, "
                                "not a finite number; re-rate that block (dna-deploy rate --blocks "
                                f"{b['block']} --restart)")
            for key in ("macs", "params"):
                if not isinstance(c.get(key), (int, float)):
                    raise DataError(f"rating table {path}: block {b['block']} candidate {name!r} lacks {key!r}; "
                                    "regenerate it with `dna-deploy rate`")
    have = {b["block"] for b in blocks if b.get("complete")}
    missing = [b for b in range(len(space.blocks)) if b not in have]
    if missing:
        raise DataError(f"rating table {path} lacks block(s) {missing}: run `dna-deploy rate --blocks "
                        f"{','.join(map(str, missing))}`")
    return d
