"""The one bench runner (seeds × methods, guarded, timed) and the one baselines module."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import celltx
from celltx.bench._runner import MethodRun, method_rows, run_methods

BENCH = Path(celltx.__file__).parent / "bench"


def _run(method, seed):
    if method == "broken":
        raise RuntimeError(f"broken on seed {seed}")
    if method == "slow":
        time.sleep(0.02)
    return {"score": seed + (0.5 if method == "slow" else 0.0)}


def test_seeds_times_methods_rows_in_order():
    rows = list(
        method_rows(["fast", "slow"], _run, [3, 4], seed_column="seed", columns={"score": np.nan})
    )
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("fast", 3),
        ("slow", 3),
        ("fast", 4),
        ("slow", 4),
    ]
    assert [r["score"] for r in rows] == [3.0, 3.5, 4.0, 4.5]
    assert all(r["error"] is None for r in rows)
    slow = [r["seconds"] for r in rows if r["method"] == "slow"]
    assert min(slow) >= 0.02  # each method is timed
    assert list(rows[0]) == ["method", "seed", "score", "seconds", "error"]


def test_a_failing_method_becomes_a_row_with_its_error():
    with pytest.warns(UserWarning, match="broken failed"):
        rows = list(
            method_rows(
                ["fast", "broken", "slow"],
                _run,
                [0, 1],
                seed_column="seed",
                columns={"score": np.nan, "n_cells": 7},
            )
        )
    df = pd.DataFrame(rows)
    assert len(df) == 6  # the other methods and seeds still ran
    bad = df[df["method"] == "broken"]
    assert bad["error"].tolist() == [
        "RuntimeError: broken on seed 0",
        "RuntimeError: broken on seed 1",
    ]
    assert bad["score"].isna().all() and (bad["n_cells"] == 7).all()
    assert (bad["seconds"] >= 0).all()
    assert df.loc[df["method"] != "broken", "error"].isna().all()


def test_skipped_methods_are_not_called():
    called = []

    def run(method, seed):
        called.append(method)
        return {"score": 1.0}

    runs = list(run_methods(["a", "b"], run, skipped={"b": "skipped: no counts"}))
    assert called == ["a"]
    assert isinstance(runs[1], MethodRun)
    assert runs[1].error == "skipped: no counts" and np.isnan(runs[1].seconds)
    assert runs[1].value is None


def test_score_is_untimed_and_guarded_and_an_error_entry_is_kept():
    def run(method, seed):
        return method

    def score(method, seed, value):
        time.sleep(0.05)
        if value == "unscorable":
            raise ValueError("no labels")
        return {"score": 1.0, "error": "partial" if value == "partial" else None}

    with pytest.warns(UserWarning, match="unscorable failed"):
        rows = list(method_rows(["ok", "partial", "unscorable"], run, score=score))
    assert [r["error"] for r in rows] == [None, "partial", "ValueError: no labels"]
    assert all(r["seconds"] < 0.05 for r in rows)


def test_label_names_the_run_in_warnings():
    with pytest.warns(UserWarning, match=r"broken \(fold 2\) failed"):
        list(run_methods(["broken"], _run, [2], label=lambda m, f: f"{m} (fold {f})"))


def test_imputation_keeps_rows_when_a_baseline_fails(monkeypatch):
    from celltx.bench import _imputation

    def broken(*args, **kwargs):
        raise RuntimeError("knn exploded")

    monkeypatch.setattr(_imputation, "_knn", broken)
    adata = celltx.datasets.pbmc68k()[:200].copy()
    with pytest.warns(UserWarning, match="knn failed"):
        df = celltx.bench.imputation(adata, methods=["mean", "knn"])
    assert df["method"].tolist() == ["mean", "knn"]
    assert df["error"].tolist() == [None, "RuntimeError: knn exploded"]
    assert np.isnan(df.loc[1, "pearson"]) and np.isfinite(df.loc[0, "pearson"])
    assert (df["seconds"] >= 0).all() and (df["n_hidden"] > 0).all()


def _sources():
    return {p.relative_to(BENCH).as_posix(): p.read_text() for p in BENCH.rglob("*.py")}


def test_baselines_are_written_once():
    src = _sources()
    # scVI / scANVI are set up and trained in one place only (MULTIVI is the multiome's own)
    for needle in ("scvi.model.SCVI(", "SCVI.setup_anndata(", "SCANVI.from_scvi_model("):
        assert [f for f, s in src.items() if needle in s] == ["_baselines.py"], needle
    assert [f for f, s in src.items() if "def _dense(" in s or "def dense(" in s] == [
        "_baselines.py"
    ]
    assert [f for f, s in src.items() if "LogisticRegression(" in s] == ["_baselines.py"]


def test_no_bench_file_over_600_lines_and_no_private_data_import():
    for name, s in _sources().items():
        assert len(s.splitlines()) <= 600, name
        assert "celltx.data._" not in s, name


def test_recipes_use_the_small_preset():
    from celltx.nn import preset

    small = preset("small")
    recipes = [
        celltx.bench.CELLTX_DEFAULTS,
        celltx.bench.EMBED_CELLTX_DEFAULTS,
        celltx.bench.IMPUTATION_CELLTX_DEFAULTS,
        celltx.bench.INTEGRATION_CELLTX_DEFAULTS,
        celltx.bench.NETWORK_CELLTX_DEFAULTS,
        celltx.bench.QUERY_CELLTX_DEFAULTS,
        celltx.bench.ZERO_SHOT_CELLTX_DEFAULTS,
        celltx.bench.MULTIOME_CELLTX_DEFAULTS,
        celltx.bench.CELLTX_PERTURBATION_DEFAULTS,
    ]
    for r in recipes:
        for key in ("d_model", "n_layers", "n_heads"):
            assert r["model"][key] == small[key]
    src = _sources()
    assert not [f for f, s in src.items() if '"d_model": 64' in s]
