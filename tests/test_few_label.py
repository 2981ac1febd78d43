"""Few-label annotation: ``celltx.bench.annotation(..., label_fraction=f)``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

import celltx
from celltx.bench._annotation import _few_labels

from _helpers import SMALL

RARE = "CD4+/CD45RA+/CD25- Naive T"  # 8 cells of pbmc68k's 700


def _folds(y, n_splits=5, seed=0):
    return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(y, y))


def test_few_labels_is_stratified_and_inside_the_training_fold(pbmc):
    y = pbmc.obs["cell_type"].astype(str).to_numpy()
    classes = np.unique(y)
    folds = _folds(y)
    few = _few_labels(folds, y, classes, 0.1, seed=0)
    for (train, test), (sub, sub_test) in zip(folds, few, strict=True):
        assert np.array_equal(test, sub_test)  # the test cells are unchanged
        assert np.isin(sub, train).all() and len(np.unique(sub)) == len(sub)
        for c in classes:
            n = (y[train] == c).sum()
            assert (y[sub] == c).sum() == max(1, int(np.floor(0.1 * n + 0.5)))
    assert 50 < len(few[0][0]) < 65  # about a tenth of 560 training cells
    again = _few_labels(folds, y, classes, 0.1, seed=0)
    other = _few_labels(folds, y, classes, 0.1, seed=1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(few, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(few, other, strict=True))


def test_annotation_with_a_tenth_of_the_labels(pbmc):
    full = celltx.bench.annotation(pbmc, "cell_type", methods=["logreg", "knn_pca"])
    few = celltx.bench.annotation(
        pbmc, "cell_type", methods=["logreg", "knn_pca"], label_fraction=0.1
    )
    y = pbmc.obs["cell_type"].astype(str).to_numpy()
    assert len(few) == 10 and few["error"].isna().all()
    # every method of a fold gets the same labelled cells: a tenth of the fold's
    expected = [
        sum(max(1, int(np.floor(0.1 * (y[tr] == c).sum() + 0.5))) for c in np.unique(y))
        for tr, _ in _folds(y)
    ]
    for m in ("logreg", "knn_pca"):
        assert few.loc[few["method"] == m, "n_labelled"].tolist() == expected
        assert (full.loc[full["method"] == m, "n_labelled"] > 500).all()
    # fewer labels, worse logistic regression (5-fold reference with all labels: 0.83)
    assert (
        few.loc[few["method"] == "logreg", "accuracy"].mean()
        < full.loc[full["method"] == "logreg", "accuracy"].mean()
    )
    same = celltx.bench.annotation(pbmc, "cell_type", methods=["logreg"], label_fraction=1)
    assert np.allclose(same["accuracy"], full.loc[full["method"] == "logreg", "accuracy"])


def test_label_fraction_leaving_a_label_without_cells_is_refused(pbmc):
    with pytest.raises(ValueError, match=r"leaves no labelled cell of .*Naive T") as err:
        celltx.bench.annotation(pbmc, "cell_type", methods=["logreg"], label_fraction=0.05)
    assert RARE in str(err.value) and "raise label_fraction to at least" in str(err.value)
    assert "CD14+ Monocyte" not in str(err.value)  # only the labels that would be empty


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, True, "0.1", float("nan")])
def test_label_fraction_bad_values(pbmc, bad):
    with pytest.raises(ValueError, match="label_fraction=.* must be a number in \\(0, 1\\]"):
        celltx.bench.annotation(pbmc, "cell_type", methods=["logreg"], label_fraction=bad)


@pytest.mark.slow
def test_celltx_pretrains_on_all_and_finetunes_on_few_labels(pbmc):
    small = pbmc[::2].copy()
    df = celltx.bench.annotation(
        small,
        "cell_type",
        methods=["celltx", "logreg"],
        n_splits=2,
        label_fraction=0.3,
        method_kwargs={
            "celltx": {
                "model": {**SMALL, "gene_selection": "rank", "dropout": 0.0},
                "pretrain_task": "contrastive",
                "pretrain_epochs": 1,
                "finetune_epochs": 1,
                "head": "finetune",
                "accelerator": "cpu",
            }
        },
    )
    assert df["error"].isna().all()
    assert df.loc[df["method"] == "celltx", "accuracy"].between(0, 1).all()
    n = df.groupby("fold")["n_labelled"].nunique()
    assert (n == 1).all() and (df["n_labelled"] < 0.4 * len(small)).all()


@pytest.mark.slow
def test_later_folds_reuse_the_pretraining_exactly(pbmc):
    """Pretraining reads no label and is seeded alike in every fold: loading the first
    fold's pretrained weights gives the same predictions as pretraining again."""
    from anndata import AnnData

    from celltx.bench._annotation import _celltx

    small = pbmc[::2].copy()
    y = small.obs["cell_type"].astype(str).to_numpy()
    data = AnnData(X=small.X.copy(), obs=small.obs[[]].copy(), var=small.var[[]].copy())
    (tr0, te0), (tr1, te1) = _folds(y, n_splits=2)
    kw = {
        "model": {**SMALL, "gene_selection": "rank", "dropout": 0.0},
        "pretrain_task": "contrastive",
        "pretrain_epochs": 1,
        "finetune_epochs": 1,
        "accelerator": "cpu",
    }
    cache: dict = {}
    _celltx(data, y, tr0, te0, 0, cache=cache, **kw)
    assert "pretrained" in cache
    reused = _celltx(data, y, tr1, te1, 0, cache=cache, **kw)
    again = _celltx(data, y, tr1, te1, 0, cache=None, **kw)
    assert np.array_equal(reused, again)
    # a labelled pretraining task is never shared between folds
    other: dict = {}
    _celltx(data, y, tr0, te0, 0, cache=other, **{**kw, "pretrain_task": "annotation"})
    assert "pretrained" not in other


def test_unknown_celltx_head_is_refused(pbmc):
    with pytest.raises(ValueError, match=r"'nope' is not a celltx head; choose 'finetune' or"):
        celltx.bench.annotation(
            pbmc, "cell_type", methods=["celltx"], method_kwargs={"celltx": {"head": "nope"}}
        )


def _record_training(monkeypatch):
    """Replace ``ScGPT.train`` by a recorder of its tasks (the model stays untrained)."""
    from celltx.model import ScGPT

    tasks: list = []
    monkeypatch.setattr(ScGPT, "train", lambda self, **kw: tasks.append(kw.get("task")))
    return tasks


@pytest.mark.filterwarnings("ignore:celltx \\(fold:UserWarning")  # predict(): untrained head
def test_few_labels_default_to_a_head_on_the_shared_pretraining(pbmc, monkeypatch):
    """With few labels celltx pretrains once (the representation recipe, no label read) and
    a head on its embedding predicts every fold: the transformer is not fine-tuned."""
    tasks = _record_training(monkeypatch)
    kw = {"celltx": {"model": {**SMALL}, "accelerator": "cpu"}}
    small = pbmc[::2].copy()
    few = celltx.bench.annotation(
        small, "cell_type", methods=["celltx"], n_splits=2, label_fraction=0.3, method_kwargs=kw
    )
    assert few["error"].isna().all() and len(few) == 2
    assert tasks == ["contrastive"]
    tasks.clear()  # with every label: pretraining once, fine-tuning in each fold
    celltx.bench.annotation(small, "cell_type", methods=["celltx"], n_splits=2, method_kwargs=kw)
    assert tasks == ["generative", "annotation", "annotation"]
    tasks.clear()  # fine-tuning with few labels, when asked
    kw["celltx"]["head"] = "finetune"
    celltx.bench.annotation(
        small, "cell_type", methods=["celltx"], n_splits=2, label_fraction=0.3, method_kwargs=kw
    )
    assert tasks == ["contrastive", "annotation", "annotation"]


def test_a_labelled_pretraining_is_not_shared_by_the_heads(pbmc, monkeypatch):
    tasks = _record_training(monkeypatch)
    kw = {"celltx": {"model": {**SMALL}, "accelerator": "cpu", "pretrain_task": "annotation"}}
    celltx.bench.annotation(
        pbmc[::2].copy(),
        "cell_type",
        methods=["celltx"],
        n_splits=2,
        label_fraction=0.3,
        method_kwargs=kw,
    )
    assert tasks == ["annotation", "annotation"]  # one per fold, on that fold's labels


def _clusters(seed=0, n=60, k=3, d=8):
    """``k`` tight clusters in an embedding; genes that carry the labels only weakly."""
    rng = np.random.default_rng(seed)
    y = np.repeat([f"t{i}" for i in range(k)], n)
    centres = rng.normal(0, 10, (k, d))
    emb = centres[np.repeat(np.arange(k), n)] + rng.normal(0, 0.5, (k * n, d))
    genes = rng.gamma(1.0, 1.0, (k * n, 40))
    genes[:, :k] += 0.4 * (y[:, None] == np.array([f"t{i}" for i in range(k)]))
    return emb, np.log1p(genes), y


@pytest.mark.parametrize("head", ["spread", "stack_spread"])
def test_spreading_heads_use_the_unlabelled_cells(head):
    """Two labelled cells per type: the genes alone barely tell the types apart, the
    unlabelled cells' embedding graph does (label spreading carries the labels along it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from celltx.bench._annotation_methods import FEW_LABEL_HEADS

    emb, genes, y = _clusters()
    train = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)])
    test = np.setdiff1d(np.arange(len(y)), train)
    pred = FEW_LABEL_HEADS[head](emb, genes, y, train, test, 0)
    f1 = f1_score(y[test], pred, average="macro")
    base = LogisticRegression(max_iter=1000).fit(genes[train], y[train]).predict(genes[test])
    assert f1 > 0.95 > f1_score(y[test], base, average="macro") + 0.2


def test_logreg_spread_baseline_gets_the_same_labels(pbmc):
    """The semi-supervised baseline: same labelled cells as logreg, plus the unlabelled ones."""
    df = celltx.bench.annotation(
        pbmc, "cell_type", methods=["logreg", "logreg_spread"], label_fraction=0.1
    )
    assert df["error"].isna().all() and df["macro_f1"].between(0, 1).all()
    by = df.pivot(index="fold", columns="method", values="n_labelled")
    assert (by["logreg"] == by["logreg_spread"]).all()
    assert "logreg_spread" in celltx.bench.ANNOTATION_METHODS


@pytest.mark.slow
def test_few_label_default_trains_end_to_end(pbmc):
    """The few-label default for real: kNN-positive contrastive pretraining, one head."""
    df = celltx.bench.annotation(
        pbmc[::2].copy(),
        "cell_type",
        methods=["celltx"],
        n_splits=2,
        label_fraction=0.3,
        method_kwargs={"celltx": {"model": {**SMALL}, "pretrain_epochs": 1, "accelerator": "cpu"}},
    )
    assert df["error"].isna().all(), df["error"].tolist()
    assert df["macro_f1"].between(0, 1).all()
    assert df["seconds"].iloc[1] < df["seconds"].iloc[0]  # fold 1 reuses fold 0's embedding
