"""`cdx eval`: the paper's metrics (FD, text consistency, mask consistency) adapted to synthetic faces.

Inception and the paper's face parser / attribute classifier cannot be downloaded here, so three small networks
trained in-repo on synthetic faces stand in for them (``nets.py``, trained by ``python -m
cdx.evaluation.train_nets --out cdx/data/eval_nets``). ``methods.py`` holds the compared generation methods
(collaborative, composable, no_spatial, no_temporal, text_only, mask_only) as one sampling loop with a weights
hook; ``run_eval.evaluate`` runs them on the same noise and conditions and scores them with ``metrics.py``.
"""
from .methods import METHODS, run_method
from .metrics import attribute_accuracy, fd, frechet_distance, pixel_accuracy
from .nets import EvalNets, load_eval_nets
from .run_eval import evaluate, markdown_table

__all__ = [
    "METHODS", "EvalNets", "attribute_accuracy", "evaluate", "fd", "frechet_distance", "load_eval_nets",
    "markdown_table", "pixel_accuracy", "run_method",
]
