"""Regression fixture: the outputs of small seeded models must not change when code moves.

``compute()`` trains tiny models on the bundled pbmc68k, a simulated Perturb-seq screen and
a simulated multiome data set (one epoch or a few, fixed seeds, CPU, one thread) and
returns their embeddings, held-out generation predictions, classifier probabilities,
perturbation predictions and cross-modal predictions. The stored values in
``tests/fixtures/regression.npz`` were recorded before the restructuring of the package;
the test recomputes and compares them.

Regenerate (only when a change of the numbers is intended, and say why in the commit)::

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_regression.py
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from celltx.nn import preset

FIXTURE = Path(__file__).parent / "fixtures" / "regression.npz"
TINY = preset("small", d_model=32, max_seq_len=64)
FIT = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64}


def _seed(seed: int = 0) -> None:
    import scvi
    import torch

    scvi.settings.seed = seed
    torch.manual_seed(seed)


def compute() -> dict[str, np.ndarray]:
    """Outputs of small seeded models, keyed by name."""
    import scanpy as sc
    import torch

    import celltx
    from celltx.model import ScGPT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in the same order as when the fixture was recorded
    try:
        return _compute(celltx, ScGPT, sc)
    finally:
        torch.set_num_threads(threads)


def _compute(celltx, ScGPT, sc) -> dict[str, np.ndarray]:
    out = {}
    # generative pretraining + annotation on real PBMCs
    adata = celltx.datasets.pbmc68k()
    ScGPT.setup_anndata(adata, labels_key="cell_type")
    _seed(0)
    model = ScGPT(adata, **TINY)
    model.is_trained_ = True
    out["init_embedding"] = model.get_latent_representation()
    model.is_trained_ = False
    model.train(max_epochs=1, **FIT)
    out["gen_embedding"] = model.get_latent_representation()
    out["gen_history"] = np.asarray(model.history["train_loss"], dtype=np.float64).ravel()
    scores = model.score_generation(indices=np.arange(100), reference_indices=np.arange(100, 400))
    out["gen_scores"] = np.array([scores["gep_mse"], scores["mvc_mse"], scores["gene_mean_mse"]])
    out["gene_embedding"] = model.get_gene_embeddings(list(adata.var_names[:20])).to_numpy()
    model.train(max_epochs=1, task="annotation", **FIT)
    out["cls_proba"] = model.predict(soft=True).to_numpy()
    out["cls_embedding"] = model.get_latent_representation()
    # scGPT's integration recipe (DSBN, DAB, batch token)
    adata = celltx.datasets.pbmc68k()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "a", "b")
    ScGPT.setup_anndata(adata, batch_key="batch")
    _seed(1)
    model = ScGPT(adata, **TINY, dsbn=True, dab=True, batch_token=True)
    model.train(max_epochs=1, task="integration_scgpt", **FIT)
    out["int_embedding"] = model.get_latent_representation()
    # perturbation
    pert = celltx.datasets.simulate_perturbseq(
        n_genes=60,
        n_perturbations=8,
        n_combos=4,
        n_cells_per_condition=20,
        n_control_cells=80,
        seed=0,
    )
    sc.pp.normalize_total(pert, target_sum=1e4)
    sc.pp.log1p(pert)
    ScGPT.setup_anndata(pert, perturbation_key="condition")
    _seed(2)
    model = ScGPT(pert, **TINY)
    model.train(max_epochs=2, task="perturbation", train_size=1.0, **FIT)
    conds = [str(c) for c in pert.obs["condition"].cat.categories[1:5]]
    out["pert_mean"] = np.asarray(model.predict_perturbation(conds, n_cells=20).X)
    # multiome
    mdata = celltx.datasets.simulate_multiome(n_cells=120, seed=0)
    ScGPT.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    _seed(3)
    model = ScGPT(mdata, **TINY, max_peaks=64)
    model.train(max_epochs=1, train_size=1.0, **FIT)
    out["mm_embedding"] = model.get_latent_representation()
    out["mm_rna_from_atac"] = np.asarray(model.predict_rna_from_atac(indices=np.arange(20)).X)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.slow
def test_outputs_unchanged():
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} is absent; record it with `python {__file__}`")
    ref = np.load(FIXTURE, allow_pickle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = compute()
    assert set(got) == set(ref.files)
    for key in ref.files:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    FIXTURE.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = compute()
    np.savez_compressed(FIXTURE, **values)
    print(f"wrote {FIXTURE}: " + ", ".join(f"{k} {v.shape}" for k, v in values.items()))
