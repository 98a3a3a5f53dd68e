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
import itertools
import math
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from dna_deploy import __version__
from dna_deploy.compute import Compute
from dna_deploy.data import DataSplits, capped, stack
from dna_deploy.distill.checkpoints import block_checkpoint_path, check_supernet_data
from dna_deploy.distill.selfsup import PopulationCentre
from dna_deploy.distill.student import BlockStudent, feature_distance, load_block
from dna_deploy.distill.teacher import Teacher
from dna_deploy.distributed import agree, all_gather, barrier, dist_info
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


class _BatchNormCache:
    """Each tree node's re-estimated BN statistics, keyed by its path. The first chunk of the rate
    split computes them (on the calibration batches, which are the same for every chunk); later
    chunks load them instead, so calibration runs once per node whatever the chunk count."""

    def __init__(self):
        self.stats: dict[tuple, list[tuple[torch.Tensor, ...]]] = {}

    @torch.no_grad()
    def calibrate(self, key: tuple, module: nn.Module, cal: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """Re-estimate (first time: returns the train-mode outputs the next layer calibrates on) or
        restore (later chunks: returns None, nothing below needs calibration outputs)."""
        bns = _bn_layers(module)
        if key in self.stats:
            for bn, (mean, var, count) in zip(bns, self.stats[key]):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
            module.eval()
            return None
        outs = recalibrate_batchnorm(module, cal)
        self.stats[key] = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
        return outs


class _Context:
    """Inputs of one block: calibration batches and rating data already through the shared front.

    `bn`: a _BatchNormCache shared by the chunks of one pass (None: calibrate every time, as a
    single chunk does). `target_std`: l1-norm's denominator over the whole rate split; with
    `sums=True` scores are per-image sums, l1-norm's not yet divided (the pass divides at its end)."""

    def __init__(self, student: BlockStudent, cal_in: list[torch.Tensor] | None, rate_in: torch.Tensor, target: torch.Tensor,
                 metric: str, channel_std: torch.Tensor | None, metrics: tuple[str, ...] = METRICS,
                 target_std: float | None = None, *, bn: _BatchNormCache | None = None):
        self.student, self.target, self.metric, self.std, self.metrics = student, target, metric, channel_std, metrics
        self.target_std = target_std  # l1-norm's denominator over the whole rate split (None: this chunk's)
        self.bn = bn
        calibrated = bn is not None and bn.stats
        self.cal = None if calibrated else [_eval(student.adapt_in, x) for x in cal_in]  # the adapter sees no path
        self.rate = _eval(student.adapt_in, rate_in)
        stem = student.supernet.stem
        if stem is not None:  # block 0: the stem precedes every path; re-estimated like the path
            self.cal = self.calibrate(("stem",), stem, self.cal)
            self.rate = _eval(stem, self.rate)

    def calibrate(self, key: tuple, module: nn.Module, cal):
        return self.bn.calibrate(key, module, cal) if self.bn is not None else recalibrate_batchnorm(module, cal)

    @torch.no_grad()
    def score(self, cal: list[torch.Tensor], rate: torch.Tensor, key: tuple = ("out",), *, sums: bool = False) -> dict:
        self.calibrate(key + ("out",), self.student.adapt_out, cal)
        out = _eval(self.student.adapt_out, rate)
        if not sums:
            return {m: float(feature_distance(out, self.target, m, self.std, target_std=self.target_std)) for m in self.metrics}
        return {m: float(feature_distance(out, self.target, m, self.std, reduce=False,
                                          target_std=1.0 if m == "l1-norm" else None).double().sum()) for m in self.metrics}


def block_units(space: SearchSpace, block: int) -> list[tuple[Op, ...]]:
    """The block's candidates cut into units of work for the ranks: every two-layer prefix (with
    the candidates that end after one layer as units of their own). Six first-layer choices would
    leave two of eight GPUs idle; 42 units share out evenly."""
    b = space.blocks[block]
    ops = [parse_op(c) for c in b.choices]
    if b.layers == 1:
        return [(o,) for o in ops]
    units = [(o,) for o in ops] if b.allow_skip else []
    return units + [(o1, o2) for o1 in ops for o2 in ops]


def _unit_of(path: tuple[Op, ...], depth: int) -> tuple[Op, ...]:
    return path[:depth]


def unit_costs(space: SearchSpace, block: int, score_macs: int = 0) -> dict[tuple[Op, ...], float]:
    """Counted cost of each unit: the MACs of every tree node it evaluates (its own prefix nodes
    included, which a rank recomputes per unit) plus `score_macs` per candidate it scores."""
    units = block_units(space, block)
    depth = max(len(u) for u in units)
    costs = dict.fromkeys(units, 0.0)
    seen: set[tuple] = set()
    for ops in space.block_candidates(block):
        path = tuple(o for o in ops if not o.is_skip)
        specs = space.block_specs(block, ops)
        unit = _unit_of(path, depth)
        for d in range(len(path)):
            node = path[:d + 1]
            if (unit, node) not in seen:
                seen.add((unit, node))
                costs[unit] += specs[d].macs
        costs[unit] += score_macs
    return costs


def balance_units(costs: dict[tuple, float], world: int) -> list[list[tuple]]:
    """Longest-processing-time-first: units by falling cost, each to the least-loaded rank. The
    same on every rank (ties broken by name), so no rank has to be told its share."""
    shares: list[list[tuple]] = [[] for _ in range(world)]
    loads = [0.0] * world
    for unit in sorted(costs, key=lambda u: (-costs[u], ".".join(map(str, u)))):
        r = min(range(world), key=lambda i: (loads[i], i))
        shares[r].append(unit)
        loads[r] += costs[unit]
    return shares


def share_work(costs: dict[tuple, float], world: int) -> tuple[list[list[tuple]], list[float], bool]:
    """(each rank's units, each rank's counted work, split by images?). Units by counted cost when
    that is even (busiest <= MAX_IMBALANCE x the mean); else, as for a one-layer block whose six
    candidates cannot be shared by four ranks, every rank rates every unit on its own share of the
    images (work then in shares of the images) and their sums are added up."""
    shares = balance_units(costs, world)
    work = [sum(costs[u] for u in share) for share in shares]
    if world > 1 and (_max_over_mean(work) or 1.0) > MAX_IMBALANCE:
        return [list(costs)] * world, [1.0 / world] * world, True
    return shares, work, False


def _walk(space: SearchSpace, block: int, ctx: _Context, units: set[tuple] | None, *, sums: bool) -> dict:
    """Depth-first over the prefix tree, restricted to `units` (None: all); {candidate: scores}."""
    b = space.blocks[block]
    layers = ctx.student.supernet.layers
    choices = [parse_op(c) for c in b.choices]
    depth_u = 1 if b.layers == 1 else 2
    prefixes = None if units is None else {u[:i] for u in units for i in range(1, len(u) + 1)}
    results: dict[str, dict] = {}

    def visit(prefix: tuple[Op, ...], cal, rate):
        depth = len(prefix)
        for op in choices:
            path = prefix + (op,)
            if prefixes is not None and path not in prefixes and _unit_of(path, depth_u) not in units:
                continue
            module = layers[depth].ops[str(op)]
            cal2 = ctx.calibrate(path, module, cal)
            rate2 = _eval(module, rate)
            if (depth + 1 == b.layers or b.allow_skip) and (units is None or _unit_of(path, depth_u) in units):
                name = ".".join(str(o) for o in path + (SKIP,) * (b.layers - depth - 1))
                results[name] = ctx.score(cal2, rate2, path, sums=sums)
            if depth + 1 < b.layers:
                visit(path, cal2, rate2)

    visit((), ctx.cal, ctx.rate)
    return results


def rate_block_tree(space: SearchSpace, block: int, ctx: _Context, *, first: str | None = None) -> dict:
    """Depth-first over the prefix tree (only the subtree under first-layer op `first` when given);
    returns {candidate string: distances}."""
    units = None if first is None else {u for u in block_units(space, block) if str(u[0]) == first}
    return _walk(space, block, ctx, units, sums=False)


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
MAX_IMBALANCE = 1.15  # busiest rank's counted work over the mean, above which a block is split by images
VIEW_GROUP = 256  # DNA++ rating views are drawn per group of this many images: chunking never changes them


def chunk_images(space: SearchSpace, block: int, x_cal: torch.Tensor, f_cal: list[torch.Tensor], *,
                 memory_gb: float, views: bool) -> int:
    """How many rate images one chunk of block `block` may hold within `memory_gb` of device memory.

    Per image, a chunk keeps the block's input and its target (only those two of the teacher's
    taps), the outputs of each depth of the walk (the prefix tree keeps one per layer) and the
    adapter's output with the distance's temporaries (about three targets); DNA++ holds two views
    of each image. An estimate in fp32 elements: bench/scale.py prints the measured peak beside it."""
    in_numel = (x_cal if block == 0 else f_cal[block - 1])[0].numel()
    target = f_cal[block][0]
    channels = target.shape[0] if target.ndim == 3 else target.shape[-1]
    out_numel = target.numel() // channels * space.blocks[block].out_channels
    per_image = 4 * (in_numel + 3 * target.numel() + space.blocks[block].layers * out_numel) * (2 if views else 1)
    n = max(1, int(memory_gb * 2 ** 30 // per_image))
    return max(VIEW_GROUP, n // VIEW_GROUP * VIEW_GROUP) if views else n


class _RateSplit:
    """The (capped) rate split, read in one pass per block: its loader is built once per stage
    (persistent workers for folder data), and each pass yields chunks of whole batches, so every
    image is decoded once per block whatever the chunk count and the number of units."""

    def __init__(self, data: DataSplits, compute: Compute, *, images: int | None, batch: int, views=None, seed: int = 0):
        self.compute, self.views, self.seed = compute, views, seed
        self.dataset = capped(data.rate, images, seed=seed)
        self.streamed = not data.in_memory
        self.batch = VIEW_GROUP if views is not None else batch  # DNA++ draws its views per VIEW_GROUP images
        self.loader = compute.loader(self.dataset, batch_size=self.batch, streamed=self.streamed)
        self.rows = len(self.dataset) * (2 if views is not None else 1)  # DNA++ rates both views of every image

    def chunk_size(self, images: int) -> int:
        """`images` rounded down to whole batches (one batch at least)."""
        return max(self.batch, images // self.batch * self.batch)

    def span(self, rank: int, world: int) -> tuple[int, int]:
        """Rank `rank`'s contiguous share of the images (whole view groups for DNA++)."""
        groups = math.ceil(len(self.dataset) / VIEW_GROUP) if self.views is not None else len(self.dataset)
        lo, hi = groups * rank // world, groups * (rank + 1) // world
        unit = VIEW_GROUP if self.views is not None else 1
        return min(lo * unit, len(self.dataset)), min(hi * unit, len(self.dataset))

    def rows_in(self, span: tuple[int, int]) -> int:
        return (span[1] - span[0]) * (2 if self.views is not None else 1)

    def chunks(self, chunk: int, *, start: int = 0, span: tuple[int, int] | None = None):
        """(index, images as rated, row segments) of chunks `start`, `start` + 1, ... of `chunk`
        images each, over `span` (image range; all of them by default). Segments: the rows the
        teacher must see as one batch (DNA++: each view of each group, since its population centre
        normalises with batch statistics)."""
        lo, hi = span or (0, len(self.dataset))
        first = lo + start * chunk
        loader = self.loader if (first, hi) == (0, len(self.dataset)) else self.compute.loader(
            Subset(self.dataset, range(first, hi)), batch_size=self.batch, streamed=self.streamed)
        held: list[torch.Tensor] = []
        seen, c = first, start
        for x, _ in loader:
            x = self.compute.batch(x)
            if self.views is not None:  # whole groups: view 1 of each group, then view 2 of each
                x = self.views(x, self.seed * 100003 + seen // VIEW_GROUP)
            held.append(x)
            seen += self.batch
            if seen - lo - c * chunk >= chunk:
                yield (c, *self._stack(held))
                held, c = [], c + 1
        if held:
            yield (c, *self._stack(held))

    def _stack(self, held: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        if self.views is None:
            x = torch.cat(held)
            return x, [min(256, len(x) - i) for i in range(0, len(x), 256)]
        halves = [g[:len(g) // 2] for g in held] + [g[len(g) // 2:] for g in held]
        return torch.cat(halves), [len(h) for h in halves]


@torch.no_grad()
def _chunk_inputs(teacher, x: torch.Tensor, segments: list[int], block: int, compute: Compute,
                  swap) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's input and target on chunk `x`: one teacher (or population-centre) forward per
    image, batch by batch as `segments` cut the rows; only the two taps the block needs are kept."""
    ins, targets = [], []
    # a DNA++ population centre stops at the block's own tap (each later block costs its paths)
    kw = {"upto": block + 1} if isinstance(teacher, PopulationCentre) else {}
    for i, n in zip(itertools.accumulate([0] + segments), segments):
        with compute.autocast():
            f = teacher.features(x[i:i + n], **kw)
        if block > 0:
            ins.append(f[block - 1].float())
        targets.append(f[block].float())
    return (x if block == 0 else torch.cat(ins)), swap(torch.cat(targets))


def _partial_paths(out_path: Path, block: int) -> list[Path]:
    return sorted(out_path.parent.glob(f"{out_path.stem}.block{block}.*partial.json"))


def _read_partials(out_path: Path, block: int, ckpt_fp: str | None) -> dict:
    """Every unit this process can see finished for this block by any rank of any earlier run
    (same checkpoint). Each rank reads its own folder: the ranks then share what they found."""
    merged = {"candidates": {}, "units_done": []}
    for path in _partial_paths(out_path, block):
        try:
            p = read_json(path, what="partial ratings")
        except DataError:  # a file cut short by a kill on another node's view of the folder: redone
            continue
        if isinstance(p, dict) and p.get("checkpoint") == ckpt_fp:
            merged["candidates"].update(p.get("candidates", {}))
            merged["units_done"] += [u for u in p.get("units_done", []) if u not in merged["units_done"]]
    return merged


def _unit_name(unit: tuple) -> str:
    return ".".join(map(str, unit))


def rate_supernet(space: SearchSpace, supernet_dir: str | Path, teacher: Teacher | None, data: DataSplits,
                  out_path: str | Path, *, blocks: list[int] | None = None, metric: str = "l1-norm", calib_images: int = 256,
                  calib_batch: int = 64, seed: int = 0, rate_images: int | None = None, rate_chunk: int | None = None,
                  rate_memory_gb: float = 4.0, centre_paths: int = 32, compute: Compute | None = None,
                  resume: bool = True, show_progress: bool = True) -> dict:
    """Rate every candidate of every block; writes the rating table (and a partial file per block
    and rank while it works).

    A DNA supernet is rated against its teacher (`metric`); a DNA++ supernet against its own
    population centre on two fixed views of the rate split (metric ssl-cosine; no teacher): the
    mean of `centre_paths` fixed paths per block, or of every candidate when the block has no more
    (training's centre of 4 paths would favour the candidates that share their layers), with BN
    re-estimated on views like those it is rated on.
    `rate_images` caps the rate split at a fixed subset, read once per block in chunks of
    `rate_chunk` images (default: as many as `rate_memory_gb` of device memory holds). Under
    torchrun the block's candidates are cut into units (two-layer prefixes), shared among the ranks
    by counted cost, and every rank reads the whole rate split; results travel through
    torch.distributed, and the table equals a one-process run's."""
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
        teacher = PopulationCentre(space, supernet_dir, upto=max(blocks) + 1, paths_per_block=centre_paths)
        metric, metrics, swap = "ssl-cosine", ("ssl-cosine",), swap_views
        views = lambda x, s: rating_views(x, aug, s)  # noqa: E731
    elif teacher is None:
        raise DataError(f"{supernet_dir} was distilled from a teacher (DNA): rate it with --teacher, the same teacher")
    elif metric not in METRICS:
        raise DataError(f"unknown rating metric {metric!r}; choose {', '.join(METRICS)}")
    teacher.to(compute)
    x_cal = compute.batch(calibration_images(data, calib_images, seed))
    if views is not None:  # BN is re-estimated on views like the rated ones: one view of each image
        both = views(x_cal, seed * 100003 - 1)
        half = len(x_cal)
        x_cal = torch.cat([both[:half][:half // 2], both[half:][half // 2:]])
    with torch.no_grad(), compute.autocast():
        f_cal = [torch.cat(f).float() for f in zip(*(teacher.features(x_cal[i:i + 256]) for i in range(0, len(x_cal), 256)))]
    chunks = {b: rate_chunk or chunk_images(space, b, x_cal, f_cal, memory_gb=rate_memory_gb, views=views is not None)
              for b in blocks}
    split = _RateSplit(data, compute, images=rate_images, batch=min(64, *chunks.values()), views=views, seed=seed)
    cb = calib_batch
    table = {"format": RATINGS_FORMAT, "method": method, "space": space.name, "space_fingerprint": space.fingerprint,
             "space_definition": space.to_dict(), "metric": metric, "calibration_seed": seed,
             "teacher_fingerprint": teacher.fingerprint,
             "data": {**data.summary(), "rated_on": "rate split", "rate_images": len(split.dataset)},
             "bn_calibration": {"images": len(x_cal), "batch": cb, **({"on": "rating views"} if views else {})},
             **({"centre_paths": centre_paths} if method == "dna++" else {}), "tool_version": __version__, "blocks": [],
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
    if not resume:  # --restart: no unit of an earlier run counts
        for b in blocks:
            for path in _partial_paths(out_path, b):
                path.unlink(missing_ok=True)
    barrier()
    total = sum(space.block_candidate_count(b) for b in blocks if b not in done)
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task("rating candidates" + (f" ({world} ranks)" if world > 1 else ""), total)
        for b in blocks:
            if b in done:
                continue
            error, mine_done, work = None, {}, []
            try:
                student, state = load_block(space, supernet_dir, b)
                if method == "dna" and state.get("teacher_fingerprint") != teacher.fingerprint:
                    raise DataError(f"block {b} in {supernet_dir} was distilled from another teacher; rate with that teacher")
                student = compute.module(student)
                # partial files count only for this checkpoint rated this way
                ckpt_fp = fingerprint([_checkpoint_hash(supernet_dir, b), {k: table[k] for k in RUN_IDENTITY},
                                       table["data"]["fingerprint"], table["data"]["rate_images"]])
                known = _read_partials(out_path, b, ckpt_fp)
            except Exception as e:  # every rank hears of it (below) instead of waiting for this one
                error, known, ckpt_fp = _rank_failure(e, world), {"candidates": {}, "units_done": []}, None
            # what any rank found finished, every rank knows
            shared = all_gather((known, error))
            agree(next((e for _, e in shared if e), None))
            finished = {"candidates": {}, "units_done": set()}
            for k, _ in shared:
                finished["candidates"].update(k["candidates"])
                finished["units_done"].update(k["units_done"])
            score_macs = sum(p.numel() for p in student.adapt_out.parameters()) * (f_cal[b][0].numel() // f_cal[b].shape[1])
            costs = {u: c for u, c in unit_costs(space, b, score_macs).items() if _unit_name(u) not in finished["units_done"]}
            shares, work, by_data = share_work(costs, world)
            if by_data:
                work = [float(split.rows_in(split.span(r, world))) for r in range(world)]
            mine = shares[rank]
            span = split.span(rank, world) if by_data else None
            partial_path = out_path.with_name(f"{out_path.stem}.block{b}.rank{rank}-of-{world}.partial.json")
            raw = None
            try:
                if mine:
                    cal_in = x_cal if b == 0 else f_cal[b - 1]
                    cal = [cal_in[i:i + cb] for i in range(0, len(cal_in), cb)]
                    std = state.get("channel_std")
                    std = compute.batch(std) if std is not None else None
                    raw = _rate_units(space, b, student, teacher, split, split.chunk_size(chunks[b]),
                                      span or (0, len(split.dataset)), cal, std, metric, metrics, swap, compute,
                                      set(mine), partial_path, ckpt_fp, lambda n: bar.advance(task, n, info=f"block {b}"))
                    if not by_data:  # this rank's units are finished whatever happens to the others
                        mine_done = _finish([raw], metrics)
                        write_json(partial_path, {"checkpoint": ckpt_fp, "units_done": sorted(map(_unit_name, mine)),
                                                  "candidates": mine_done})
            except Exception as e:
                error = _rank_failure(e, world)
            # every rank's results, or every rank's one-line failure
            outcome = all_gather((mine_done, raw if by_data else None, error))
            agree(next((e for _, _, e in outcome if e), None))
            if by_data:
                mine_done = _finish([r for _, r, _ in outcome if r is not None], metrics)
                finished["candidates"].update(mine_done)
            for got, _, _ in outcome:
                finished["candidates"].update(got)
            if rank == 0:
                bar.advance(task, max(0, space.block_candidate_count(b) - len(mine_done)), info=f"block {b}")
                missing = [".".join(map(str, ops)) for ops in space.block_candidates(b)
                           if ".".join(map(str, ops)) not in finished["candidates"]]
                if missing:
                    raise DataError(f"rating block {b}: {len(missing)} candidate(s) were rated by no rank "
                                    f"(first {missing[0]}); rerun `dna-deploy rate`")
                cands = {}
                for ops in space.block_candidates(b):
                    name = ".".join(map(str, ops))
                    r = finished["candidates"][name]
                    specs = space.block_specs(b, ops)
                    cands[name] = {"loss": r[metric], **{f"dist_{m}": r[m] for m in metrics},
                                   "macs": sum(s.macs for s in specs), "params": sum(s.params for s in specs)}
                table["blocks"] = [x for x in table["blocks"] if x["block"] != b] + [
                    {"block": b, "complete": True, "checkpoint_sha256": _checkpoint_hash(supernet_dir, b),
                     "candidates": cands, "sharding": {"ranks": world, "units": len(costs), "rate_chunk": chunks[b],
                                                       "split": "images" if by_data else "candidates",
                                                       "work_per_rank": work,
                                                       "work_max_over_mean": _max_over_mean(work)}}]
                table["blocks"].sort(key=lambda x: x["block"])
                table["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                write_json(out_path, table)
            barrier()
            partial_path.unlink(missing_ok=True)
            if rank == 0:
                for path in _partial_paths(out_path, b):
                    path.unlink(missing_ok=True)
    if rank == 0:
        table["fingerprint"] = fingerprint([b["candidates"] for b in table["blocks"]])
        write_json(out_path, table)
    barrier()
    return read_json(out_path, what="rating table") if rank != 0 else table


def _rank_failure(e: Exception, world: int) -> str:
    """One line for the other ranks. Alone, the error itself goes on (a bug keeps its traceback);
    among ranks, this rank prints its traceback (a bug is still found) and all ranks raise the line."""
    if world <= 1:
        raise e
    if not isinstance(e, DataError):
        traceback.print_exc()
    text = str(e).strip().splitlines()
    return (text[0] if text else "") if isinstance(e, DataError) else f"{type(e).__name__}: {text[0] if text else ''}"


def _max_over_mean(work: list[float]) -> float | None:
    mean = sum(work) / len(work) if work else 0.0
    return max(work) / mean if mean > 0 else None


def _rate_units(space, b, student, teacher, split: _RateSplit, chunk: int, span: tuple[int, int], cal, std, metric,
                metrics, swap, compute, units: set, partial_path: Path, ckpt_fp: str, advance) -> dict:
    """One pass over `span` of the rate split for this rank's units of block b: per chunk, the
    teacher once, then the prefix tree walked over every unit (BN statistics re-estimated on the
    first chunk and reused after). Returns the raw sums ({candidate: {metric: sum}}, rows, the
    target's moments for l1-norm's denominator). They are checkpointed after each chunk, so a
    kill loses at most one chunk."""
    assignment = fingerprint([sorted(map(_unit_name, units)), chunk, list(span)])
    start, raw = 0, {"sums": {}, "rows": split.rows_in(span), "moments": [0.0, 0.0, 0]}
    if partial_path.is_file():
        try:
            old = read_json(partial_path, what="partial ratings")
        except DataError:
            old = {}
        going = old.get("in_progress") or {}
        if old.get("checkpoint") == ckpt_fp and going.get("assignment") == assignment:
            start, raw = going["chunks_done"], going["raw"]
    bn = _BatchNormCache()
    sums, moments = raw["sums"], raw["moments"]
    for c, x, segments in split.chunks(chunk, start=start, span=span):
        rate_in, target = _chunk_inputs(teacher, x, segments, b, compute, swap)
        if "l1-norm" in metrics:
            t = target.double()
            moments[:] = [moments[0] + float(t.sum()), moments[1] + float((t * t).sum()), moments[2] + t.numel()]
        ctx = _Context(student, cal, rate_in, target, metric, std, metrics, bn=bn)
        part = _walk(space, b, ctx, units, sums=True)
        for name, r in part.items():
            acc = sums.setdefault(name, dict.fromkeys(r, 0.0))
            for m, v in r.items():
                acc[m] += v
        if c == start:
            advance(len(part))
        write_json(partial_path, {"checkpoint": ckpt_fp, "units_done": [], "candidates": {},
                                  "in_progress": {"assignment": assignment, "chunks_done": c + 1, "raw": raw}})
    return raw


def _finish(raws: list[dict], metrics: tuple[str, ...]) -> dict:
    """Ratings from the raw sums of one or more ranks over disjoint image spans: per-image means,
    l1-norm divided by the std of the target over all those images."""
    sums: dict[str, dict] = {}
    rows, moments = 0, [0.0, 0.0, 0]
    for raw in raws:
        rows += raw["rows"]
        moments = [a + b for a, b in zip(moments, raw["moments"])]
        for name, r in raw["sums"].items():
            acc = sums.setdefault(name, dict.fromkeys(r, 0.0))
            for m, v in r.items():
                acc[m] += v
    target_std = 1.0
    if "l1-norm" in metrics and moments[2]:
        s1, s2, n = moments
        target_std = math.sqrt(max(s2 - s1 * s1 / n, 0.0) / max(n - 1, 1))
    return {name: {m: v / rows / (target_std if m == "l1-norm" else 1.0) for m, v in r.items()} for name, r in sums.items()}


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
