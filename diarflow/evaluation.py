"""Old import path of :mod:`diarflow.testing.evaluation` (dev-only support moved there).

Kept only so that ``tools/bench_stream.py`` and ``tools/bench_jobs.py``, edited on other branches, keep
working; delete this file once they import ``diarflow.testing.evaluation``.
"""

from diarflow.testing.evaluation import *  # noqa: F401,F403
from diarflow.testing.evaluation import __all__  # noqa: F401
