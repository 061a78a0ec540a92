"""The end of a sweep (`snnexp train -m ...`): the table of its runs, as `snnexp compare SWEEP_FOLDER` prints it,
printed and written into the sweep folder (compare.csv, compare.md, compare.txt).

A Hydra callback, named in conf/train.yaml (hydra.callbacks.sweep_table). Hydra calls on_multirun_end once the
sweeper has returned, whichever sweeper it is (the basic one, Optuna's), on the machine that launched the jobs; a
single run never calls it. The jobs are done by then: a table that cannot be made is one warning, never the sweep's
failure.
"""

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from snnexp.errors import SnnexpError
from snnexp.report.compare import summary, write, wrote


class SweepTable(Callback):
    """Prints the sweep's table (runs that differ only in trainer.seed merged) and writes it into its folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":  # torchrun: every process ran the sweep; rank 0 speaks for them
            return
        try:
            sweep = Path(str(config.hydra.sweep.dir))
            rows, text = summary([sweep])
        except Exception as e:  # a bug included: the sweep's own result stands
            return _warn("no table of the sweep", e)
        print(f"\n{text}", flush=True)
        try:
            write(rows, sweep, text)
        except Exception as e:
            return _warn("the sweep's table was not saved", e)
        print(wrote(sweep), flush=True)


def _warn(what: str, e: Exception) -> None:
    """One line on stderr: snnexp's own message for an error it knows, else the exception's type and message."""
    reason = str(e) if isinstance(e, SnnexpError) else f"{type(e).__name__}: {e}"
    print(f"snnexp: warning: {what}: {' '.join(reason.split())}", file=sys.stderr, flush=True)
