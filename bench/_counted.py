"""`python bench/_counted.py ARGS...` = `dna-deploy ARGS...`, counting what bench/scale.py --ranks
reports per process: image files decoded (PIL opens, in loader workers too), images through the
teacher, and the peak resident memory. Written to $DNA_DEPLOY_COUNT_DIR/rank{RANK}.json at exit.
Counting only: every call goes on to the real function."""

import atexit
import json
import multiprocessing
import os
import resource
import sys
from pathlib import Path

from PIL import Image

from dna_deploy.distill import teacher as _teacher

DECODES = multiprocessing.Value("q", 0)  # shared with forked loader workers
TEACHER_IMAGES = [0]
_open, _features = Image.open, _teacher.Teacher.features


def _counting_open(*args, **kwargs):
    with DECODES.get_lock():
        DECODES.value += 1
    return _open(*args, **kwargs)


def _counting_features(self, x):
    TEACHER_IMAGES[0] += len(x)
    return _features(self, x)


def _report():
    import torch

    out = Path(os.environ["DNA_DEPLOY_COUNT_DIR"]) / f"rank{os.environ.get('RANK', '0')}.json"
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    out.write_text(json.dumps({"decodes": DECODES.value, "teacher_images": TEACHER_IMAGES[0],
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "cuda_peak_mb": peak}))


Image.open = _counting_open
_teacher.Teacher.features = _counting_features
atexit.register(_report)
sys.argv = ["dna-deploy", *sys.argv[1:]]
from dna_deploy.cli.app import main  # noqa: E402

main()
