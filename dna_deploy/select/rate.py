"""DNA rating: every candidate of every block, on held-out data, after re-estimating BatchNorm.

A candidate's rating is the distance between its block output and the teacher's feature on the
`rate` split (never the validation split), with BN statistics re-estimated for that path on
training batches (shared statistics are wrong for any single path).

Candidates of a block form a prefix tree: a layer's re-estimated statistics and outputs depend
only on the layers before it, so walking the tree depth-first computes each layer once per prefix
instead of once per candidate, and gives the same numbers as rating candidates one by one
(`rate_block_naive`, kept for the benchmark and the equality test).

At scale: the rate split is capped (`rate_images`) and streamed in chunks; each first-layer subtree
is walked once per chunk and its per-image distances summed, so memory is bounded by the chunk.
Under torchrun the subtrees are shared among ranks (rank r takes first-layer choices r, r + world,
...); each subtree is independent of the others, so the merged table equals a one-process run's.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from dna_deploy import __version__
from dna_deploy.compute import Compute
from dna_deploy.data import DataSplits, capped, stack
from dna_deploy.distill.checkpoints import block_checkpoint_path, check_supernet_data
from dna_deploy.distill.student import BlockStudent, feature_distance, load_block
from dna_deploy.distill.teacher import Teacher
from dna_deploy.distributed import barrier, dist_info
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
def recalibrate_batchnorm(module: nn.Module, cal: list[torch.Tensor]) -> list[torch.Tensor]:
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
                 metric: str, channel_std: torch.Tensor | None, metrics: tuple[str, ...] = METRICS,
                 target_std: float | None = None):
        self.student, self.target, self.metric, self.std, self.metrics = student, target, metric, channel_std, metrics
        self.target_std = target_std  # l1-norm's denominator over the whole rate split (None: this chunk's)
        self.cal = [_eval(student.adapt_in, x) for x in cal_in]  # the input adapter sees no path
        self.rate = _eval(student.adapt_in, rate_in)
        stem = student.supernet.stem
        if stem is not None:  # block 0: the stem precedes every path; re-estimated like the path
            self.cal = recalibrate_batchnorm(stem, self.cal)
            self.rate = _eval(stem, self.rate)

    @torch.no_grad()
    def score(self, cal: list[torch.Tensor], rate: torch.Tensor) -> dict:
        recalibrate_batchnorm(self.student.adapt_out, cal)
        out = _eval(self.student.adapt_out, rate)
        return {m: float(feature_distance(out, self.target, m, self.std, target_std=self.target_std)) for m in self.metrics}


def rate_block_tree(space: SearchSpace, block: int, ctx: _Context, *, first: str | None = None) -> dict:
    """Depth-first over the prefix tree (only the subtree under first-layer op `first` when given);
    returns {candidate string: distances}."""
    b = space.blocks[block]
    layers = ctx.student.supernet.layers
    choices = [parse_op(c) for c in b.choices]
    results: dict[str, dict] = {}

    def visit(prefix: tuple[Op, ...], cal, rate):
        depth = len(prefix)
        for op in choices:
            if depth == 0 and first is not None and str(op) != first:
                continue
            module = layers[depth].ops[str(op)]
            cal2 = recalibrate_batchnorm(module, cal)
            rate2 = _eval(module, rate)
            path = prefix + (op,)
            if depth + 1 == b.layers or b.allow_skip:
                name = ".".join(str(o) for o in path + (SKIP,) * (b.layers - depth - 1))
                results[name] = ctx.score(cal2, rate2)
            if depth + 1 < b.layers:
                visit(path, cal2, rate2)

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
                cal = recalibrate_batchnorm(m, cal)
                rate = _eval(m, rate)
            recalibrate_batchnorm(student.adapt_out, cal)
            out = _eval(student.adapt_out, rate)
        results[".".join(map(str, ops))] = {m: float(feature_distance(out, target, m, channel_std)) for m in METRICS}
    return results


def block_inputs(teacher: Teacher, data: DataSplits, *, calib_images: int, seed: int = 0, rate_views=None):
    """Teacher features on a few training batches (BN calibration) and on the whole rate split
    (through `rate_views` first, when given: DNA++ rates on two fixed views). For small data and
    tests; `rate_supernet` streams the rate split in chunks instead."""
    x_cal = calibration_images(data, calib_images, seed)
    x_rate, _ = stack(data.rate)
    if rate_views is not None:
        x_rate = rate_views(x_rate)
    f_cal = [torch.cat(f) for f in zip(*(teacher.features(x_cal[i:i + 256]) for i in range(0, len(x_cal), 256)))]
    f_rate = [torch.cat(f) for f in zip(*(teacher.features(x_rate[i:i + 256]) for i in range(0, len(x_rate), 256)))]
    return x_cal, f_cal, x_rate, f_rate


def calibration_images(data: DataSplits, n: int, seed: int) -> torch.Tensor:
    """The training images every candidate's BatchNorm is re-estimated on: fixed by `seed`."""
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([data.train[i][0] for i in idx])


def _checkpoint_hash(supernet_dir: Path, block: int) -> str | None:
    path = block_checkpoint_path(supernet_dir, block)
    return sha256_file(path)[:16] if path.is_file() else None


def supernet_method(supernet_dir: str | Path) -> str:
    """'dna' or 'dna++', as supernet.json records (folders from before DNA++ are DNA)."""
    meta = Path(supernet_dir) / "supernet.json"
    return read_json(meta, what="supernet metadata").get("method", "dna") if meta.is_file() else "dna"


RUN_IDENTITY = ("space_fingerprint", "teacher_fingerprint", "metric", "calibration_seed", "bn_calibration", "method")
VIEW_GROUP = 256  # DNA++ rating views are drawn per group of this many images: chunking never changes them


class _RateSplit:
    """The (capped) rate split, streamed in chunks of `chunk` images, with each chunk's teacher (or
    population-centre) features. One chunk when everything fits: then it is computed once."""

    def __init__(self, teacher, data: DataSplits, compute: Compute, *, images: int | None, chunk: int,
                 views=None, seed: int = 0):
        self.teacher, self.compute, self.views, self.seed = teacher, compute, views, seed
        self.dataset = capped(data.rate, images, seed=seed)
        # DNA++ draws its views per VIEW_GROUP images: its chunks hold whole groups
        self.chunk = chunk if views is None else max(VIEW_GROUP, chunk // VIEW_GROUP * VIEW_GROUP)
        self.streamed = not data.in_memory
        self._memo: list | None = None
        self.n = len(self.dataset) * (2 if views else 1)  # DNA++ rates both views of every image

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.chunk)

    def _images(self, c: int) -> torch.Tensor:
        idx = range(c * self.chunk, min((c + 1) * self.chunk, len(self.dataset)))
        loader = self.compute.loader(Subset(self.dataset, idx), batch_size=256, streamed=self.streamed)
        return torch.cat([x for x, _ in loader])

    @torch.no_grad()
    def chunk_features(self, c: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(images as rated, features at every tap) of chunk c, on the device."""
        if self._memo is not None and self._memo[0] == c:
            return self._memo[1]
        x = self.compute.batch(self._images(c))
        if self.views is not None:
            start = c * self.chunk // VIEW_GROUP
            groups = [self.views(x[i:i + VIEW_GROUP], self.seed * 100003 + start + i // VIEW_GROUP)
                      for i in range(0, len(x), VIEW_GROUP)]
            x = torch.cat([g[:len(g) // 2] for g in groups] + [g[len(g) // 2:] for g in groups])
        feats = []
        for i in range(0, len(x), 256):
            with self.compute.autocast():
                feats.append([f.float() for f in self.teacher.features(x[i:i + 256])])
        out = (x, [torch.cat(f) for f in zip(*feats)])
        if len(self) == 1:
            self._memo = [c, out]
        return out

    @torch.no_grad()
    def target_std(self, block: int, swap) -> float:
        """std over the whole (capped) rate split of the block's target: l1-norm's denominator."""
        s1 = s2 = 0.0
        n = 0
        for c in range(len(self)):
            t = swap(self.chunk_features(c)[1][block]).double()
            s1, s2, n = s1 + float(t.sum()), s2 + float((t * t).sum()), n + t.numel()
        return math.sqrt(max(s2 - s1 * s1 / n, 0.0) / max(n - 1, 1))


def _partial_paths(out_path: Path, block: int) -> list[Path]:
    return sorted(out_path.parent.glob(f"{out_path.stem}.block{block}.*partial.json"))


def _read_partials(out_path: Path, block: int, ckpt_fp: str | None) -> dict:
    """Every subtree finished for this block by any rank of any earlier run (same checkpoint)."""
    merged = {"checkpoint": ckpt_fp, "candidates": {}, "subtrees_done": []}
    for path in _partial_paths(out_path, block):
        p = read_json(path, what="partial ratings")
        if p.get("checkpoint") == ckpt_fp:
            merged["candidates"].update(p["candidates"])
            merged["subtrees_done"] += [s for s in p["subtrees_done"] if s not in merged["subtrees_done"]]
    return merged


def rate_supernet(space: SearchSpace, supernet_dir: str | Path, teacher: Teacher | None, data: DataSplits,
                  out_path: str | Path, *, blocks: list[int] | None = None, metric: str = "l1-norm", calib_images: int = 256,
                  calib_batch: int = 64, seed: int = 0, rate_images: int | None = None, rate_chunk: int = 2048,
                  compute: Compute | None = None, resume: bool = True, show_progress: bool = True) -> dict:
    """Rate every candidate of every block; writes the rating table (and partial files per block
    and rank while it works).

    A DNA supernet is rated against its teacher (`metric`); a DNA++ supernet against its own
    population centre on two fixed views of the rate split (metric ssl-cosine; no teacher).
    `rate_images` caps the rate split at a fixed subset; it is streamed `rate_chunk` images at a
    time. Under torchrun the first-layer subtrees of each block are shared among the ranks, each
    rank checkpoints its own, and rank 0 merges them: the ratings equal a one-process run's."""
    supernet_dir, out_path = Path(supernet_dir), Path(out_path)
    compute = compute or Compute.from_settings()
    rank, world = dist_info()
    method = supernet_method(supernet_dir)
    check_supernet_data(supernet_dir, data, what="rate")
    blocks = list(range(len(space.blocks))) if blocks is None else blocks
    views, swap, metrics = None, (lambda f: f), METRICS
    if method == "dna++":
        from dna_deploy.distill.selfsup import PopulationCentre, rating_views, swap_views

        aug = read_json(supernet_dir / "supernet.json", what="supernet metadata")["augmentation"]
        aug = {**aug, "scale": tuple(aug["scale"])}
        # block b needs the centres of blocks 0..b: its input and its target
        teacher = PopulationCentre(space, supernet_dir, upto=max(blocks) + 1)
        metric, metrics, swap = "ssl-cosine", ("ssl-cosine",), swap_views
        views = lambda x, s: rating_views(x, aug, s)  # noqa: E731
    elif teacher is None:
        raise DataError(f"{supernet_dir} was distilled from a teacher (DNA): rate it with --teacher, the same teacher")
    elif metric not in METRICS:
        raise DataError(f"unknown rating metric {metric!r}; choose {', '.join(METRICS)}")
    teacher.to(compute)
    x_cal = compute.batch(calibration_images(data, calib_images, seed))
    with torch.no_grad(), compute.autocast():
        f_cal = [torch.cat(f).float() for f in zip(*(teacher.features(x_cal[i:i + 256]) for i in range(0, len(x_cal), 256)))]
    split = _RateSplit(teacher, data, compute, images=rate_images, chunk=rate_chunk, views=views, seed=seed)
    cb = calib_batch
    table = {"format": RATINGS_FORMAT, "method": method, "space": space.name, "space_fingerprint": space.fingerprint,
             "space_definition": space.to_dict(), "metric": metric, "calibration_seed": seed,
             "teacher_fingerprint": teacher.fingerprint,
             "data": {**data.summary(), "rated_on": "rate split", "rate_images": len(split.dataset)},
             "bn_calibration": {"images": len(x_cal), "batch": cb}, "tool_version": __version__, "blocks": [],
             "compute": {**compute.describe(), "world_size": world}}
    if resume and out_path.is_file():
        old = read_json(out_path, what="rating table")
        same = all(old.get(k) == table[k] for k in RUN_IDENTITY) \
            and (old.get("data") or {}).get("fingerprint") == data.fingerprint \
            and (old.get("data") or {}).get("rate_images", len(split.dataset)) == len(split.dataset)
        if same:  # a finished block is kept only while its checkpoint is the one it was rated from
            table["blocks"] = [b for b in old.get("blocks", []) if b.get("complete") and
                               b.get("checkpoint_sha256") == _checkpoint_hash(supernet_dir, b["block"])]
    done = {b["block"] for b in table["blocks"] if b.get("complete")}
    if not resume and rank == 0:  # --restart: no subtree of an earlier run counts
        for b in blocks:
            for path in _partial_paths(out_path, b):
                path.unlink(missing_ok=True)
    barrier()
    mine = {b: [str(c) for i, c in enumerate(space.blocks[b].choices) if i % world == rank] for b in blocks}
    total = sum(space.block_candidate_count(b) for b in blocks if b not in done) // world
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task("rating candidates" + (f" (rank 0 of {world})" if world > 1 else ""), total)
        for b in blocks:
            if b in done:
                continue
            student, state = load_block(space, supernet_dir, b)
            if method == "dna" and state.get("teacher_fingerprint") != teacher.fingerprint:
                raise DataError(f"block {b} in {supernet_dir} was distilled from another teacher; rate with that teacher")
            student = compute.module(student)
            # partial files count only for this checkpoint rated this way
            ckpt_fp = fingerprint([_checkpoint_hash(supernet_dir, b), {k: table[k] for k in RUN_IDENTITY},
                                   table["data"]["fingerprint"], table["data"]["rate_images"]])
            partial = _read_partials(out_path, b, ckpt_fp)
            # everything known so far travels on in this rank's file: rewriting it loses nothing
            mine_done = {"checkpoint": ckpt_fp, "candidates": dict(partial["candidates"]),
                         "subtrees_done": list(partial["subtrees_done"])}
            partial_path = out_path.with_name(f"{out_path.stem}.block{b}.rank{rank}-of-{world}.partial.json")
            cal_in = x_cal if b == 0 else f_cal[b - 1]
            cal = [cal_in[i:i + cb] for i in range(0, len(cal_in), cb)]
            std = state.get("channel_std")
            std = compute.batch(std) if std is not None else None
            t_std = split.target_std(b, swap) if "l1-norm" in metrics else None
            todo = [op for op in mine[b] if op not in partial["subtrees_done"]]
            for op in todo:
                sums: dict[str, dict] = {}
                for c in range(len(split)):
                    x, feats = split.chunk_features(c)
                    rate_in = x if b == 0 else feats[b - 1]
                    ctx = _Context(student, cal, rate_in, swap(feats[b]), metric, std, metrics, target_std=t_std)
                    part = rate_block_tree(space, b, ctx, first=op)
                    for name, r in part.items():
                        acc = sums.setdefault(name, dict.fromkeys(r, 0.0))
                        for m, v in r.items():
                            acc[m] += v * len(rate_in)
                    if c == 0:
                        bar.advance(task, len(part), info=f"block {b}")
                mine_done["candidates"].update({k: {m: v / split.n for m, v in r.items()} for k, r in sums.items()})
                mine_done["subtrees_done"].append(op)
                write_json(partial_path, mine_done)  # a finished subtree survives a kill
            barrier()
            if rank == 0:
                partial = _read_partials(out_path, b, ckpt_fp)
                missing = [op for op in space.blocks[b].choices if str(op) not in partial["subtrees_done"]]
                if missing:
                    raise DataError(f"rating block {b}: subtree(s) {missing} were rated by no rank; rerun `dna-deploy rate`")
                cands = {}
                for ops in space.block_candidates(b):
                    name = ".".join(map(str, ops))
                    r = partial["candidates"][name]
                    specs = space.block_specs(b, ops)
                    cands[name] = {"loss": r[metric], **{f"dist_{m}": r[m] for m in metrics},
                                   "macs": sum(s.macs for s in specs), "params": sum(s.params for s in specs)}
                table["blocks"] = [x for x in table["blocks"] if x["block"] != b] + [
                    {"block": b, "complete": True, "checkpoint_sha256": _checkpoint_hash(supernet_dir, b),
                     "candidates": cands}]
                table["blocks"].sort(key=lambda x: x["block"])
                table["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                write_json(out_path, table)
                for path in _partial_paths(out_path, b):
                    path.unlink(missing_ok=True)
            barrier()
    if rank == 0:
        table["fingerprint"] = fingerprint([b["candidates"] for b in table["blocks"]])
        write_json(out_path, table)
    barrier()
    return read_json(out_path, what="rating table") if rank != 0 else table


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
