"""Train and embed from a lamindb collection through scvi-tools' MappedCollectionDataModule.

Run by ``tests/test_lamindb.py`` in a fresh process whose ``HOME`` and working directory
are a temporary folder, so
that the local lamindb instance it creates (SQLite + a storage folder, no network) leaves the
user's lamindb settings alone. ``argv[1]``: that folder; ``argv[2]``: ``init`` (create the
instance) or ``run`` (connect to it, train and embed; writes ``result.json``). The two steps
are separate processes because lamindb 2.12 cannot query a database in the process that
created it ("re-setting django"; a new process connects and works).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np


def main(root: Path, step: str) -> None:
    import lamindb as ln

    if step == "init":
        ln.setup.init(storage=str(root / "celltx_test"))
        return

    import scvi
    from scvi.dataloaders import MappedCollectionDataModule

    import celltx
    from celltx.model import ScGPT

    adata = celltx.datasets.pbmc68k()
    shared = adata.var_names[5:]
    parts = (adata[:400].copy(), adata[400:, shared].copy())  # the second lacks 5 genes
    artifacts = [
        ln.Artifact.from_anndata(part, key=f"pbmc68k_{i}.h5ad").save()
        for i, part in enumerate(parts)
    ]
    collection = ln.Collection(artifacts, key="pbmc68k").save()

    def datamodule(**kwargs):
        kw = {"batch_size": 64, "parallel": False, "accelerator": "cpu", "device": 1}
        return MappedCollectionDataModule(collection, **{**kw, **kwargs})

    scvi.settings.seed = 0
    train_dm = datamodule(shuffle=True, batch_key="phase", collection_val=collection)
    model = ScGPT(datamodule=train_dm, d_model=32, n_layers=2, n_heads=4, max_seq_len=128)
    model.train(max_epochs=1, datamodule=train_dm, accelerator="cpu", enable_progress_bar=False)
    z = model.get_latent_representation(datamodule=datamodule(shuffle=False), batch_size=50)
    # the same weights on the AnnData of the collection's joined genes
    model.save(str(root / "model"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ScGPT.load(str(root / "model"), adata=adata[:, shared].copy())
        z_adata = loaded.get_latent_representation()
    errors = {}
    for name, make in {
        "join_none": lambda: ScGPT(datamodule=datamodule(join=None), d_model=32, n_heads=4),
        "annotation": lambda: model.train(max_epochs=1, datamodule=datamodule(), task="annotation"),
        "early_stopping": lambda: model.train(
            max_epochs=1, datamodule=datamodule(), early_stopping=True
        ),
    }.items():
        try:
            make()
            errors[name] = None
        except ValueError as err:
            errors[name] = str(err)
    result = {
        "genes": model.vocab.genes[: len(shared)],
        "shared": [str(g) for g in shared],
        "history": {k: v.to_numpy(dtype=float).ravel().tolist() for k, v in model.history.items()},
        "shape": list(z.shape),
        "finite": bool(np.isfinite(z).all()),
        "spread": float(z.std(axis=0).mean()),
        "max_abs_difference": float(np.abs(z - z_adata).max()),
        "errors": errors,
    }
    (root / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
