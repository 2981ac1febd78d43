"""Perturb-seq simulator: single and paired perturbations on a known gene-regulatory network."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from celltx.data import condition_name

from ._simulation import _check_fraction, _check_int, _nb_counts

_INTERACTION_TYPES = ("synergy", "buffering", "epistasis", "neomorphic")


def _random_dag(
    rng: np.random.Generator,
    n_total: int,
    n_regulators: int,
    out_degree: tuple[int, int],
    regulator_out_degree: float,
    weight_range: tuple[float, float],
    positive_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed sparse DAG over ``n_total`` genes.

    The first ``n_regulators`` genes of a random topological order regulate. Returns ``W``
    (``W[i, j]``: effect of gene ``j`` on gene ``i``) and the topological order.
    """
    order = rng.permutation(n_total)
    regulators = order[:n_regulators]
    targets_pool = order[n_regulators:]
    W = np.zeros((n_total, n_total))
    lo, hi = weight_range
    for k, r in enumerate(regulators):
        later_regs = regulators[k + 1 :]
        n_reg_children = min(len(later_regs), rng.poisson(regulator_out_degree))
        n_children = min(len(targets_pool), int(rng.integers(out_degree[0], out_degree[1] + 1)))
        children = np.concatenate(
            [
                rng.choice(later_regs, n_reg_children, replace=False) if n_reg_children else [],
                rng.choice(targets_pool, n_children, replace=False),
            ]
        ).astype(int)
        signs = np.where(rng.random(len(children)) < positive_fraction, 1.0, -1.0)
        W[children, r] = signs * rng.uniform(lo, hi, len(children))
    return W, order


def simulate_perturbseq(
    n_genes: int = 200,
    n_perturbations: int = 40,
    n_combos: int = 30,
    n_cells_per_condition: int = 60,
    n_control_cells: int = 300,
    n_unmeasured_targets: int = 0,
    interaction_fraction: float = 0.3,
    activation_fraction: float = 0.0,
    n_regulators: int | None = None,
    n_programs: int = 3,
    regulator_noise: float = 0.35,
    mean_library_size: float = 3000.0,
    dispersion: float = 10.0,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a Perturb-seq screen (single and paired perturbations) with ground truth.

    A sparse signed gene-regulatory network (a random DAG) links ``n_regulators``
    regulators to their downstream genes. Expression is modelled on the log scale: the log
    rate of a cell is ``b + d_condition + M @ (L h + e)`` with ``b`` the baseline log
    expression, ``M = (I - W)^-1`` the total (direct and indirect) effect of every gene on
    every other, ``h`` a few cell-state programs with loadings ``L`` and ``e`` per-cell
    noise on the regulators (so regulators co-vary with their targets across cells).
    Perturbing a target adds an input ``u`` (a knock-down, ``u < 0``, or for
    ``activation_fraction`` of the targets an activation, ``u > 0``) to its log rate,
    which propagates through the network: ``d = M[:, t] u``. A pair ``A+B`` adds the two
    single effects; for ``interaction_fraction`` of the pairs an interaction term is added
    on top: synergy (the sum is amplified), buffering (the sum is damped), epistasis (the
    first gene masks most of the second one's effect) or a neomorphic effect (two other
    regulators respond). Counts are negative binomial around
    ``library size × softmax(log rate)``.

    Parameters
    ----------
    n_genes
        Genes in the returned panel.
    n_perturbations
        Single-gene perturbations (distinct target genes, all regulators).
    n_combos
        Two-gene perturbations, drawn among pairs of the targets.
    n_cells_per_condition
        Mean number of cells per perturbed condition (each varies by up to ±20%).
    n_control_cells
        Control cells (condition ``"ctrl"``).
    n_unmeasured_targets
        Targets that are simulated (they regulate as usual) but left out of the returned
        panel, as for a perturbed gene that is not among the measured genes.
    interaction_fraction
        Fraction of the pairs that interact non-additively.
    activation_fraction
        Fraction of the targets that are activated rather than knocked down. The default
        (0, a CRISPRi-like screen) keeps the direction of an unseen target's effect
        predictable; in a mixed screen it cannot be inferred from the gene alone.
    n_regulators
        Regulators in the network (default: ``n_perturbations + 10``).
    n_programs
        Cell-state programs (latent per-cell variation shared by many genes).
    regulator_noise
        Standard deviation of the per-cell fluctuation of each regulator's log expression;
        it propagates to the regulator's targets, so genes co-vary with their regulators.
    mean_library_size
        Mean total counts of a cell over all simulated genes.
    dispersion
        Negative binomial inverse dispersion ``theta`` (variance ``mu + mu^2/theta``).
    seed
        Random seed; the same seed gives the same data.

    Returns
    -------
    anndata.AnnData
        Raw counts (integer-valued float32, CSR) in ``.X``. ``obs``: ``condition`` (GEARS
        notation ``"ctrl"``, ``"A+ctrl"``, ``"A+B"``), ``control`` (1 for control cells),
        ``cell_type`` (``"simulated"``). ``var``: ``gene_name``, ``regulator``,
        ``perturbed``. ``uns["simulation"]`` holds the ground truth: ``grn`` (edge list
        ``source``, ``target``, ``weight`` over all simulated genes), ``perturbations``
        (per target: ``mode``, ``input``, ``measured``), ``combos`` (per pair:
        ``gene_a``, ``gene_b``, ``interacts``, ``interaction_type``,
        ``interaction_strength``), ``log_rate_delta`` (conditions × all simulated genes:
        the true change of the mean log rate from control), ``baseline_log_rate`` (the
        control log rate ``b`` of every simulated gene), ``mean_expression``
        (conditions × panel genes: the noise-free log-normalised expression
        ``log1p(1e4 · p)``, ``p`` the expected expression proportions over the panel at
        the average cell state), ``unmeasured_genes``, ``program_loadings`` (panel genes × programs: a program's
        effect on each gene's log rate, through the network), ``gene_modules`` (each panel
        gene's program of largest absolute loading in the column ``module``,
        ``"unassigned"`` where all are below 0.25: the known gene modules) and ``params``.

    Raises
    ------
    ValueError
        If a size is out of range (e.g. more pairs than the targets allow, or more
        unmeasured than perturbed targets).

    Examples
    --------
    >>> from celltx.datasets import simulate_perturbseq
    >>> adata = simulate_perturbseq(n_genes=100, n_perturbations=10, n_combos=5, seed=1)
    >>> adata.obs["condition"].nunique()
    16
    >>> truth = adata.uns["simulation"]["log_rate_delta"]
    >>> bool(truth.loc["ctrl"].abs().max() == 0)
    True
    """
    n_genes = _check_int("n_genes", n_genes, 2)
    n_perturbations = _check_int("n_perturbations", n_perturbations, 1)
    n_combos = _check_int("n_combos", n_combos, 0)
    n_cells_per_condition = _check_int("n_cells_per_condition", n_cells_per_condition, 2)
    n_control_cells = _check_int("n_control_cells", n_control_cells, 2)
    n_unmeasured_targets = _check_int("n_unmeasured_targets", n_unmeasured_targets, 0)
    n_programs = _check_int("n_programs", n_programs, 0)
    interaction_fraction = _check_fraction("interaction_fraction", interaction_fraction)
    activation_fraction = _check_fraction("activation_fraction", activation_fraction)
    if n_unmeasured_targets > n_perturbations:
        raise ValueError(
            f"n_unmeasured_targets ({n_unmeasured_targets}) cannot exceed n_perturbations "
            f"({n_perturbations}); lower n_unmeasured_targets."
        )
    n_total = n_genes + n_unmeasured_targets
    if n_regulators is None:
        n_regulators = min(n_perturbations + 10, n_total - 1)
    n_regulators = _check_int("n_regulators", n_regulators, 1)
    if not n_perturbations <= n_regulators < n_total:
        raise ValueError(
            f"Need n_perturbations ({n_perturbations}) <= n_regulators ({n_regulators}) < "
            f"simulated genes ({n_total}); raise n_genes or lower n_perturbations."
        )
    max_pairs = n_perturbations * (n_perturbations - 1) // 2
    if n_combos > max_pairs:
        raise ValueError(
            f"n_combos={n_combos} exceeds the {max_pairs} distinct pairs of "
            f"{n_perturbations} targets; lower n_combos or raise n_perturbations."
        )
    if mean_library_size <= 0 or dispersion <= 0:
        raise ValueError("mean_library_size and dispersion must be positive.")

    rng = np.random.default_rng(seed)
    width = max(3, len(str(n_total - 1)))
    names = np.array([f"G{i:0{width}d}" for i in range(n_total)])

    # -- network -------------------------------------------------------------------------
    W, order = _random_dag(
        rng,
        n_total,
        n_regulators,
        out_degree=(6, 16),
        regulator_out_degree=1.0,
        weight_range=(0.4, 0.9),
        positive_fraction=0.5,
    )
    M = np.linalg.inv(np.eye(n_total) - W)  # total effects; exact for a DAG
    regulators = order[:n_regulators]
    is_regulator = np.zeros(n_total, dtype=bool)
    is_regulator[regulators] = True

    # -- baseline expression (regulators moderately expressed so they are measurable) ----
    b = rng.normal(0.0, 1.0, n_total)
    b[regulators] = rng.normal(0.5, 0.5, n_regulators)

    # -- perturbations ------------------------------------------------------------------
    targets = np.sort(rng.choice(regulators, n_perturbations, replace=False))
    activated = rng.random(n_perturbations) < activation_fraction
    u = np.where(
        activated, rng.uniform(1.5, 2.5, n_perturbations), -rng.uniform(1.5, 3.0, n_perturbations)
    )
    single_delta = M[:, targets] * u  # (n_total, n_perturbations)
    hidden = (
        np.sort(rng.choice(targets, n_unmeasured_targets, replace=False))
        if n_unmeasured_targets
        else np.array([], int)
    )
    measured = np.setdiff1d(np.arange(n_total), hidden)

    pair_index = np.array(
        [(i, j) for i in range(n_perturbations) for j in range(i + 1, n_perturbations)], dtype=int
    ).reshape(-1, 2)
    chosen = (
        pair_index[rng.choice(len(pair_index), n_combos, replace=False)]
        if n_combos
        else pair_index[:0]
    )
    flip = rng.random(len(chosen)) < 0.5
    chosen = np.where(flip[:, None], chosen[:, ::-1], chosen)
    n_interacting = int(round(interaction_fraction * n_combos))
    interacts = np.zeros(n_combos, dtype=bool)
    interacts[rng.choice(n_combos, n_interacting, replace=False)] = True
    kinds = np.array(["none"] * n_combos, dtype=object)
    strengths = np.zeros(n_combos)

    cond_names = ["ctrl"] + [condition_name((names[t],)) for t in targets]
    deltas = [np.zeros(n_total)] + [single_delta[:, k] for k in range(n_perturbations)]
    combo_rows = []
    for c, (i, j) in enumerate(chosen):
        additive = single_delta[:, i] + single_delta[:, j]
        delta = additive.copy()
        if interacts[c]:
            kind = _INTERACTION_TYPES[int(rng.integers(len(_INTERACTION_TYPES)))]
            if kind == "synergy":
                s = rng.uniform(0.6, 1.0)
                delta = additive * (1.0 + s)
            elif kind == "buffering":
                s = rng.uniform(0.5, 0.8)
                delta = additive * (1.0 - s)
            elif kind == "epistasis":
                s = rng.uniform(0.7, 1.0)
                delta = single_delta[:, i] + (1.0 - s) * single_delta[:, j]
            else:
                others = np.setdiff1d(regulators, targets[[i, j]])
                extra = rng.choice(others, 2, replace=False)
                s = rng.uniform(1.5, 2.5)
                delta = additive + (M[:, extra] * (s * rng.choice([-1.0, 1.0], 2))).sum(axis=1)
            kinds[c], strengths[c] = kind, s
        name = condition_name((names[targets[i]], names[targets[j]]))
        cond_names.append(name)
        deltas.append(delta)
        combo_rows.append(
            {
                "condition": name,
                "gene_a": names[targets[i]],
                "gene_b": names[targets[j]],
                "interacts": bool(interacts[c]),
                "interaction_type": kinds[c],
                "interaction_strength": float(strengths[c]),
            }
        )
    D = np.vstack(deltas)  # (n_conditions, n_total)
    n_conditions = len(cond_names)

    # -- cells --------------------------------------------------------------------------
    lo, hi = int(round(0.8 * n_cells_per_condition)), int(round(1.2 * n_cells_per_condition))
    counts_per = np.concatenate(
        [[n_control_cells], rng.integers(max(lo, 2), max(hi, 2) + 1, n_conditions - 1)]
    )
    codes = np.repeat(np.arange(n_conditions), counts_per)
    n_cells = len(codes)
    inputs = rng.normal(0.0, regulator_noise, (n_cells, n_total)) * is_regulator
    loadings = np.zeros((n_total, n_programs))
    if n_programs:
        L = rng.normal(0.0, 0.5, (n_total, n_programs)) * (rng.random((n_total, n_programs)) < 0.15)
        inputs += rng.normal(0.0, 1.0, (n_cells, n_programs)) @ L.T
        loadings = M @ L  # a program's effect on each gene's log rate, through the network
    log_rate = b + D[codes] + inputs @ M.T
    log_rate -= log_rate.max(axis=1, keepdims=True)
    prop = np.exp(log_rate)
    prop /= prop.sum(axis=1, keepdims=True)
    library = np.exp(rng.normal(np.log(mean_library_size), 0.25, n_cells))
    mu = prop * library[:, None]
    theta = dispersion * np.exp(rng.normal(0.0, 0.3, n_total))
    counts = _nb_counts(rng, mu, theta)[:, measured]

    # -- AnnData ------------------------------------------------------------------------
    panel = names[measured]
    conditions = np.asarray(cond_names, dtype=object)[codes]
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(conditions, categories=cond_names),
            "control": (codes == 0).astype(np.int64),
            "cell_type": pd.Categorical(["simulated"] * n_cells),
        },
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    is_target = np.zeros(n_total, dtype=bool)
    is_target[targets] = True
    var = pd.DataFrame(
        {"gene_name": panel, "regulator": is_regulator[measured], "perturbed": is_target[measured]},
        index=pd.Index(panel, name=None),
    )
    adata = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)

    src, dst = np.nonzero(W.T)  # W[dst, src]
    grn = pd.DataFrame({"source": names[src], "target": names[dst], "weight": W[dst, src]})
    pert_table = pd.DataFrame(
        {
            "mode": np.where(activated, "activation", "knockdown"),
            "input": u,
            "measured": ~np.isin(targets, hidden),
        },
        index=pd.Index(names[targets], name="gene"),
    )
    combos = pd.DataFrame(
        combo_rows,
        columns=[
            "condition",
            "gene_a",
            "gene_b",
            "interacts",
            "interaction_type",
            "interaction_strength",
        ],
    ).set_index("condition")
    truth_rate = b + D
    truth_prop = np.exp(
        truth_rate[:, measured] - truth_rate[:, measured].max(axis=1, keepdims=True)
    )
    truth_prop /= truth_prop.sum(axis=1, keepdims=True)
    adata.uns["simulation"] = {
        "grn": grn,
        "perturbations": pert_table,
        "combos": combos,
        "log_rate_delta": pd.DataFrame(D, index=cond_names, columns=names),
        "baseline_log_rate": pd.DataFrame({"log_rate": b}, index=names),
        "mean_expression": pd.DataFrame(
            np.log1p(1e4 * truth_prop), index=cond_names, columns=panel
        ),
        "unmeasured_genes": np.asarray(names[hidden], dtype=str),
        "program_loadings": pd.DataFrame(
            loadings[measured], index=panel, columns=[f"program{k}" for k in range(n_programs)]
        ),
        "gene_modules": _modules(loadings[measured], panel),
        "params": {
            "n_genes": n_genes,
            "n_perturbations": n_perturbations,
            "n_combos": n_combos,
            "n_cells_per_condition": n_cells_per_condition,
            "n_control_cells": n_control_cells,
            "n_unmeasured_targets": n_unmeasured_targets,
            "interaction_fraction": interaction_fraction,
            "activation_fraction": activation_fraction,
            "n_regulators": n_regulators,
            "n_programs": n_programs,
            "regulator_noise": float(regulator_noise),
            "mean_library_size": float(mean_library_size),
            "dispersion": float(dispersion),
            "seed": int(seed),
        },
    }
    return adata


#: smallest absolute effective loading that puts a gene in a program's module
MODULE_LOADING = 0.25


def _modules(loadings: np.ndarray, genes: np.ndarray) -> pd.DataFrame:
    """Each gene's module: its program of largest absolute loading ("unassigned" if all are small)."""
    label = np.full(len(genes), "unassigned", dtype=object)
    if loadings.shape[1]:
        strongest = np.abs(loadings).argmax(1)
        keep = np.abs(loadings).max(1) >= MODULE_LOADING
        label[keep] = [f"program{k}" for k in strongest[keep]]
    return pd.DataFrame({"module": pd.Categorical(label)}, index=pd.Index(genes, name="gene"))
