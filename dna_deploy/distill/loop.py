"""Resume, checkpoint and metrics for every epoch loop (teacher, retraining, block-wise DNA).

Written once so the trainers cannot drift apart: the checkpoint is written first and the metrics
line after it, so a kill never leaves metrics ahead of the weights; on start the metrics file is
made to agree with the checkpoint's history, so an epoch interrupted after its checkpoint is never
listed twice.

Mid-epoch checkpoints (`save(..., step=k)`) hold the steps done in the unfinished epoch and its
running sums; they add no metrics line. A resumed run continues with the batches not yet seen
(compute.EpochBatches skips them without loading them).
"""

from __future__ import annotations

import json
from pathlib import Path

from dna_deploy.distributed import barrier, dist_info
from dna_deploy.errors import DataError
from dna_deploy.io import atomic_write_text, load_checkpoint, save_checkpoint


def start_block_run(out_dir: str | Path, n_blocks: int, blocks: list[int] | None) -> tuple[Path, list[int], int, int]:
    """(out_dir, the blocks to train in order, rank, world size) for a block-wise run: rank 0 makes
    the folder, the others wait for it; a block that does not exist is named."""
    out_dir = Path(out_dir)
    rank, world = dist_info()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    blocks = list(range(n_blocks)) if blocks is None else sorted(blocks)
    bad = [b for b in blocks if not 0 <= b < n_blocks]
    if bad:
        raise DataError(f"block {bad[0]} does not exist; this space has blocks 0..{n_blocks - 1}")
    return out_dir, blocks, rank, world


class EpochCheckpoint:
    """One training run's checkpoint file and its lines in a (possibly shared) metrics JSONL.

    identity: settings that must match for a checkpoint to be resumed (config, fingerprints);
    key: the fields that mark this run's lines in the metrics file (e.g. {"block": 2});
    writer: False on ranks other than 0, which read but never write."""

    def __init__(self, path: str | Path, *, identity: dict, metrics_path: str | Path | None = None,
                 key: dict | None = None, writer: bool = True):
        self.path, self.identity, self.key, self.writer = Path(path), identity, key or {}, writer
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None

    def resume(self, objects: dict, *, enabled: bool = True) -> tuple[int, list[dict], dict]:
        """Load state into `objects` (name -> anything with load_state_dict) when the checkpoint
        matches; returns (epochs done, history, the raw checkpoint or {}). The raw checkpoint's
        "step" (steps done in the next epoch, 0 at an epoch's end) and "running" (that epoch's
        running sums) continue an interrupted epoch."""
        start, history, state = 0, [], {}
        if enabled and self.path.is_file():
            loaded = load_checkpoint(self.path, what="training checkpoint")
            if all(loaded.get(k) == v for k, v in self.identity.items()) and all(k in loaded for k in objects):
                for name, obj in objects.items():
                    obj.load_state_dict(loaded[name])
                start, history, state = int(loaded["epoch"]), json.loads(loaded["history"]), loaded
        self._sync_metrics(history)
        return start, history, state

    def save(self, objects: dict, *, epoch: int, history: list[dict], extra: dict | None = None, step: int = 0,
             running: dict | None = None) -> None:
        """Checkpoint after `epoch` whole epochs and `step` steps of the next one; at an epoch's end
        (step 0) also append that epoch's metrics line."""
        if not self.writer:
            return
        save_checkpoint(self.path, {**{k: v.state_dict() for k, v in objects.items()}, **self.identity,
                                    **(extra or {}), "epoch": epoch, "history": json.dumps(history), "step": step,
                                    "running": json.dumps(running or {})})
        if self.metrics_path is not None and step == 0:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps({**self.key, **history[-1]}) + "\n")

    @staticmethod
    def position(state: dict) -> tuple[int, dict]:
        """(steps done in the interrupted epoch, its running sums) from a resumed checkpoint."""
        return int(state.get("step", 0)), json.loads(state.get("running") or "{}")

    def _mine(self, rec: dict) -> bool:
        return all(rec.get(k) == v for k, v in self.key.items())

    def _sync_metrics(self, history: list[dict]) -> None:
        """Keep other runs' lines; replace this run's with the resumed history."""
        if not self.writer or self.metrics_path is None:
            return
        others = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill mid-write
                    continue
                if not self._mine(rec):
                    others.append(rec)
        lines = others + [{**self.key, **h} for h in history]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in lines))
