"""Each method's predictions written for cell-eval and, when asked, scored by it."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ._cell_eval import cell_eval_command, cell_eval_installed, run_cell_eval, write_cell_eval

# the task's logger, ``celltx.bench._perturbation``
logger = logging.getLogger(__package__)


def _safe_name(name: str) -> str:
    """A folder name for a method (letters, digits, ``._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "method"


class _CellEvalExport:
    """Writes each method's predictions for cell-eval and, if asked, adds its metrics."""

    def __init__(
        self,
        folder: Path,
        x,
        names: np.ndarray,
        test_names: list[str],
        control_value: str,
        var_names: pd.Index,
        obs_names: pd.Index,
        run: bool,
        profile: str,
    ):
        keep = np.flatnonzero(np.isin(names, [*test_names, control_value]))
        self.real = AnnData(
            X=x[keep],
            obs=pd.DataFrame({"condition": names[keep]}, index=obs_names[keep].astype(str)),
            var=pd.DataFrame(index=var_names.copy()),
        )
        self.folder, self.test_names, self.control_value = folder, test_names, control_value
        self.run, self.profile = run, profile
        self.path_real = folder / "real.h5ad"
        self.real_written = False
        self.de_real: Path | None = None
        self.commands: list[str] = []

    def __call__(self, name: str, means: np.ndarray, cells, table: pd.DataFrame) -> pd.DataFrame:
        out = self.folder / _safe_name(name)
        path_pred = out / "pred.h5ad"
        pred = (
            cells
            if cells is not None
            else pd.DataFrame(means, index=self.test_names, columns=self.real.var_names)
        )
        try:
            write_cell_eval(
                pred,
                self.real,
                path_pred,
                None if self.real_written else self.path_real,
                conditions=self.test_names,
                control_value=self.control_value,
            )
        except Exception as err:  # noqa: BLE001 - an export failure must not lose the scores
            msg = f"{type(err).__name__}: {err}"
            logger.warning("%s: cell-eval export failed: %s", name, msg)
            warnings.warn(f"{name}: cell-eval export failed ({msg}).", UserWarning, stacklevel=3)
            return table.assign(cell_eval_error=msg) if self.run else table
        self.real_written = True
        self.commands.append(
            cell_eval_command(path_pred, self.path_real, out, profile=self.profile)
        )
        if not self.run:
            return table
        try:
            scores = run_cell_eval(
                path_pred, self.path_real, out, profile=self.profile, de_real=self.de_real
            )
        except Exception as err:  # noqa: BLE001 - cell-eval's failure must not lose the scores
            msg = f"{type(err).__name__}: {err}"
            logger.warning("%s: cell-eval failed: %s", name, msg)
            warnings.warn(
                f"{name}: cell-eval failed ({msg}); its cell_eval_* columns are NaN.",
                UserWarning,
                stacklevel=3,
            )
            return table.assign(cell_eval_error=msg)
        if self.de_real is None and (out / "real_de.csv").is_file():
            self.de_real = out / "real_de.csv"  # the observed DE, reused by the next methods
        scores = scores.add_prefix("cell_eval_")
        logger.info("%s: cell-eval scored %d conditions", name, len(scores))
        return table.join(scores, on="condition").assign(cell_eval_error=None)

    def finish(self) -> None:
        """Write the command lines; say how to run them when cell-eval did not."""
        if not self.commands:
            return
        script = self.folder / "cell_eval_commands.sh"
        script.write_text("#!/bin/sh\n" + "\n".join(self.commands) + "\n")
        if not self.run:
            why = (
                "cell_eval=False"
                if cell_eval_installed()
                else "cell-eval is not installed (pip install cell-eval)"
            )
            logger.warning(
                "cell-eval files written to %s but not scored (%s); score them with the "
                "commands in %s, e.g.\n%s",
                self.folder,
                why,
                script,
                self.commands[0],
            )
