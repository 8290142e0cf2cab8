"""Benchmarks and one-off scripts, run from the repository root as ``python -m tools.<name>``."""

from __future__ import annotations

import sys


def exit_without_dev_corpus(tool: str) -> None:
    """End the benchmark ``tool`` with one line and exit status 0 when the dev corpus is absent.

    The benchmarks measure accuracy and speed on the team's dev corpus (``../shared/eval/dev`` beside
    the checkout, or ``$DIARFLOW_DEV_DIR``), which a clone of the repository does not have; the tests
    use the clips shipped in ``tests/data/speech`` instead.
    """
    from diarflow.testing.evaluation import default_dev_dir

    dev_dir = default_dev_dir()
    if not (dev_dir / "manifest.json").is_file():
        print(f"{tool}: skipped, no dev corpus at {dev_dir} (set DIARFLOW_DEV_DIR to run this benchmark)")
        sys.exit(0)
