"""How much do celltx's embeddings differ from scGPT's on data *with* ties?

scGPT's ``embed_data`` bins each cell's expressed values at its quantiles and, where a
value equals several bin edges (ties: many genes with the same count), draws one of the
possible bins at random on every call. celltx gives such values the middle bin,
deterministically. On tie-free data both are exact (tested against the original's output);
this script measures the difference on real data with ties.

It loads the scGPT-written reference checkpoint (``../shared/fixtures/scgpt_reference/
ckpt_small``; random weights, 2 layers, d_model 64), embeds ``pbmc68k_reduced``'s ``.raw``
(700 cells, log-normalized, ties present) with celltx, and with a re-implementation of
scGPT's random tie-breaking (two draws, different seeds) through the same transformer, and
also with every tie put in the middle of its possible bins (celltx's first,
deterministic rule, replaced because of this comparison), and prints, for each pair, the median and maximum over cells of ``|Δ|`` between L2-normalised
embeddings and of the distance relative to the spread of cells (distance divided by the
median distance of a cell to the mean embedding).

Run from the repository root::

    python benchmarks/binning_ties.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import celltx

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "scgpt_reference" / "ckpt_small"
)


def scgpt_style_bins(row: np.ndarray, n_bins: int, rng: np.random.Generator | None) -> np.ndarray:
    """Bins of one cell's positive values with scGPT's random choice among tied edges
    (``rng=None``: the middle of the possible bins instead)."""
    edges = np.quantile(row, np.linspace(0, 1, n_bins - 1))
    hi = np.digitize(row, edges)  # largest possible bin
    lo = np.digitize(row, edges, right=True)  # one below the smallest possible bin
    if rng is None:
        return (hi + lo + 1) // 2
    return np.ceil(hi - rng.random(len(row)) * (hi - lo))


def scgpt_style_embedding(model, adata, seed: int | None) -> np.ndarray:
    rng = None if seed is None else np.random.default_rng(seed)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    ids = model.vocab.lookup(adata.var_names)
    net = model.module.transformer.eval()
    n_bins, pad_value = model.module.tokenizer.n_bins, model.module.tokenizer.pad_value
    out = []
    with torch.no_grad():
        for row in x:  # a reference re-implementation, written for clarity, not speed
            keep = (row > 0) & (ids >= 0)
            genes = np.r_[model.vocab.cls_id, ids[keep]]
            vals = np.r_[pad_value, scgpt_style_bins(row[keep], n_bins, rng)]
            g = torch.as_tensor(genes)[None]
            v = torch.as_tensor(vals, dtype=torch.float32)[None]
            out.append(net.encode(g, v, torch.zeros_like(g, dtype=torch.bool))[0, 0].numpy())
    emb = np.stack(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def compare(a: np.ndarray, b: np.ndarray, spread: float) -> tuple[float, float, float]:
    d = np.abs(a - b)
    dist = np.linalg.norm(a - b, axis=1)
    return float(np.median(d.max(1))), float(d.max()), float(np.median(dist) / spread)


def main() -> None:
    if not FIXTURE.exists():
        raise SystemExit(
            f"{FIXTURE} is absent; this comparison needs the scGPT reference checkpoint."
        )
    adata = celltx.datasets.pbmc68k()
    x = adata.X.toarray()
    n_ties = sum(len(r[r > 0]) - len(np.unique(r[r > 0])) for r in x)
    model = celltx.model.ScGPT.load_pretrained(FIXTURE, adata, accelerator="cpu")
    ours = model.get_latent_representation(normalize=True)
    draw1 = scgpt_style_embedding(model, adata, seed=1)
    draw2 = scgpt_style_embedding(model, adata, seed=2)
    middle = scgpt_style_embedding(model, adata, seed=None)
    spread = float(np.median(np.linalg.norm(draw1 - draw1.mean(0), axis=1)))
    print(
        f"\npbmc68k_reduced .raw: {adata.n_obs} cells, {n_ties:,} tied expressed values "
        f"(of {(x > 0).sum():,}); checkpoint {FIXTURE.name}\n"
    )
    print(
        "| pair | median over cells of max abs diff | max abs diff | median distance / cell spread |"
    )
    print("|---|---:|---:|---:|")
    for name, (a, b) in {
        "celltx vs scGPT draw 1": (ours, draw1),
        "celltx vs scGPT draw 2": (ours, draw2),
        "scGPT draw 1 vs draw 2": (draw1, draw2),
        "middle-bin rule vs scGPT draw 1": (middle, draw1),
    }.items():
        med, mx, rel = compare(a, b, spread)
        print(f"| {name} | {med:.2e} | {mx:.2e} | {rel:.3f} |")


if __name__ == "__main__":
    main()
