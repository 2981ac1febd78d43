"""Zero-shot annotation (LangCell-style cell–text alignment) on pbmc68k, next to its baselines.

:func:`celltx.bench.zero_shot` on scanpy's bundled 700 PBMCs, split in two halves
(stratified by cell type, ``--seed``): celltx is trained on one half's labels and annotates
the other half.

``cross``
    Cross-naming: the target half's labels are renamed to another naming convention
    (Azimuth-style short names, fixed below before any run): ``CD14+ Monocyte`` →
    ``CD14 Mono``, ``CD19+ B`` → ``B``, … The candidates are the new names.
``heldout``
    Held-out types: ``--heldout`` types (default: CD56+ NK, CD19+ B, CD34+) are removed
    from the training half; the target half keeps every type and the candidates are all
    ten names. ``unseen_accuracy`` is the accuracy on the held-out types' cells.

``--smooth K [K ...]`` adds rows for celltx's annotation with each cell's similarities averaged
over its K nearest target cells (``predict_zero_shot(smooth_neighbors=K)``), over celltx's
cell vectors and over the target's 50 PCs (GRIT).

Run from the repository root (on an otherwise idle machine)::

    python benchmarks/zero_shot.py cross --seeds 0 1 2 --smooth 5 15
    python benchmarks/zero_shot.py heldout --seeds 0 1 2 --smooth 5 15
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

import celltx

RENAME = celltx.bench.PBMC68K_SHORT_NAMES
HELDOUT = ["CD56+ NK", "CD19+ B", "CD34+"]


def halves(seed: int):
    adata = celltx.datasets.pbmc68k()
    idx = np.arange(adata.n_obs)
    a, b = train_test_split(
        idx, test_size=0.5, random_state=seed, stratify=adata.obs["cell_type"].astype(str)
    )
    return adata[np.sort(a)].copy(), adata[np.sort(b)].copy()


def run(
    task: str, seed: int, heldout: list[str], celltx_settings: dict, smooth: list[int] | None = None
) -> pd.DataFrame:
    source, target = halves(seed)
    if task == "cross":
        target.obs["renamed"] = target.obs["cell_type"].astype(str).map(RENAME)
        return celltx.bench.zero_shot(
            source,
            "cell_type",
            target,
            "renamed",
            seed=seed,
            celltx=celltx_settings,
            smooth_neighbors=smooth,
        )
    source = source[~source.obs["cell_type"].isin(heldout)].copy()
    source.obs["cell_type"] = source.obs["cell_type"].astype(str)
    return celltx.bench.zero_shot(
        source,
        "cell_type",
        target,
        "cell_type",
        seed=seed,
        unseen=heldout,
        celltx=celltx_settings,
        smooth_neighbors=smooth,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["cross", "heldout"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--heldout", nargs="+", default=HELDOUT)
    p.add_argument("--celltx", type=json.loads, default={}, help="overrides, as JSON")
    p.add_argument(
        "--smooth", type=int, nargs="+", default=None, metavar="K", help="add kNN-smoothed rows"
    )
    args = p.parse_args()
    tables = []
    for seed in args.seeds:
        t = run(args.task, seed, args.heldout, args.celltx, args.smooth)
        t.insert(0, "seed", seed)
        print(t.to_string(index=False), flush=True)
        if seed == args.seeds[0]:
            print(t.attrs["label_texts"][["term_label", "how"]].to_string())
            print(t.attrs["candidates"][["term_label", "how"]].to_string())
            for how in ("names", "descriptions"):
                print(f"classifier mapping ({how}):", t.attrs.get(f"mapping_{how}"))
        t.attrs = {}  # (texts shown above; concat compares attrs)
        tables.append(t)
    all_ = pd.concat(tables)
    cols = [c for c in ("accuracy", "macro_f1", "unseen_accuracy") if c in all_]
    print("\nmean ± sd over seeds", args.seeds)
    print(all_.groupby("method", sort=False)[cols].agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
