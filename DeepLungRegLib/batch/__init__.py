"""Registering a cohort: many pairs, on one machine or a Dask cluster, resumably (``deeplungreg batch``).

>>> from DeepLungRegLib.batch import run_cohort
>>> rows = run_cohort("cohort.csv", "out", method="embed", workers=2)
"""

from .cohort import CohortRow, cohort_rows, read_cohort
from .results import RESULT_COLUMNS
from .run import cluster_plan, default_workers, register_pair, run_cohort

__all__ = ["CohortRow", "RESULT_COLUMNS", "cluster_plan", "cohort_rows", "default_workers", "read_cohort", "register_pair", "run_cohort"]
