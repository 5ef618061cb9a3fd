"""Analysis of GoRL runs: logged action distributions, multimodality statistics, learning curves.

Reads what a run writes (``<log_dir>/distributions/*.npz`` from
:class:`gorl.distributions.ActionDistributionLogger`, ``metrics.csv`` from the CSV logger,
``config.yaml`` from the CLI) and returns numbers and matplotlib figures. The notebooks in
``notebooks/`` are thin layers over these functions; ``python -m gorl.analysis`` executes them.
"""

from gorl.analysis.io import (
    Snapshot,
    decoder_spans,
    end_of_stage,
    eval_points,
    load_metrics,
    load_snapshot,
    load_snapshots,
    run_task,
    stage_boundaries,
)
from gorl.analysis.plots import label_from_dir, plot_learning_curve, plot_modality, plot_probe_distributions, plot_runs
from gorl.analysis.stats import bandwidth, count_modes, dip_test, format_table, kde, modality_table, samples_of

__all__ = [
    "Snapshot", "load_snapshot", "load_snapshots", "load_metrics", "end_of_stage", "eval_points", "stage_boundaries",
    "decoder_spans", "run_task", "dip_test", "kde", "bandwidth", "count_modes", "modality_table", "format_table",
    "samples_of", "plot_probe_distributions", "plot_modality", "plot_learning_curve", "plot_runs", "label_from_dir",
]
