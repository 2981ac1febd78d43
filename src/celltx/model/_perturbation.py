"""Genetic perturbation: conditions, control cells and predicted responses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from celltx.data import condition_name, parse_condition, parse_conditions
from celltx.module import PERTURBATION_KEY

from ._host import ModelHost


class PerturbationMixin(ModelHost):
    """Genetic perturbation: conditions, control cells and predicted responses."""

    def _registered_conditions(self) -> list[str] | None:
        """Canonical names of the registered perturbation conditions (``None``: none)."""
        if not self._setup_args(self.adata).get("perturbation_key"):
            return None
        mapping = self.adata_manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        return [str(c) for c in mapping]

    def _parse(self, condition: str) -> tuple[str, ...]:
        setup = self._setup_args(self.adata)
        genes = parse_condition(
            condition, control_value=setup.get("control_value", "ctrl"), strict=True
        )
        most = setup.get("max_perturbed_genes", 2)
        if len(genes) > most:
            raise ValueError(
                f"Condition {condition!r} perturbs {len(genes)} genes; this model was set up for at "
                f"most {most} (setup_anndata(max_perturbed_genes=...))."
            )
        return genes

    def _condition_targets(self, conditions: Sequence[str] | None) -> list[str]:
        if not conditions:
            return []
        return list(dict.fromkeys(g for c in conditions for g in self._parse(c)))

    def _condition_gene_ids(self, conditions: Sequence[str]) -> np.ndarray:
        """Vocabulary ids ``(n_conditions, max_perturbed_genes)`` of the perturbed genes.

        ``-1`` = none. Raises, listing them, when genes are absent from the vocabulary.
        """
        most = self._setup_args(self.adata).get("max_perturbed_genes", 2)
        parsed = [self._parse(c) for c in conditions]
        unknown = sorted({g for p in parsed for g in p if g not in self.vocab})
        if unknown:
            raise ValueError(
                f"{len(unknown)} perturbed gene(s) are not in the model's gene vocabulary: "
                f"{unknown[:20]}. Only genes with a token can be perturbed: use conditions on "
                "vocabulary genes (model.vocab.genes), or build the model on data whose "
                "perturbation column names these genes."
            )
        ids = np.full((len(parsed), max(most, 1)), -1, dtype=np.int64)
        for i, p in enumerate(parsed):
            if p:
                ids[i, : len(p)] = self.vocab.lookup(p)
        return ids

    def _control_mask(self, adata: AnnData) -> np.ndarray:
        setup = self._setup_args(self.adata)
        names = parse_conditions(
            adata.obs[setup["perturbation_key"]].astype(object),
            control_value=setup["control_value"],
            max_genes=setup["max_perturbed_genes"],
        )[1]
        return (names == setup["control_value"]).to_numpy()

    def _store_controls(self) -> None:
        """Give the module the training data's control cells, with their pairing groups."""
        from scipy import sparse

        manager = self.adata_manager
        ctrl = np.flatnonzero(self._control_mask(self.adata))
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)[ctrl]
        X = X.toarray() if sparse.issparse(X) else np.asarray(X)
        batch = torch.as_tensor(
            np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()[ctrl]
        )
        labels = torch.as_tensor(
            np.asarray(manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()[ctrl]
        )
        m = self.module
        n_batch = self.summary_stats.n_batch if self._setup_args(self.adata).get("batch_key") else 1
        m.set_controls(
            torch.as_tensor(X, dtype=torch.float32),
            m.pair_groups(batch, labels),
            m.n_pair_groups(n_batch),
        )

    def _controls(self, control_adata: AnnData | None, n_cells: int, seed: int, batch_size: int):
        """Expression, batch codes and the AnnData of ``n_cells`` sampled control cells."""
        self._require_head(
            "pert",
            (
                "This model has no perturbation parts: ScGPT.setup_anndata(adata, "
                "perturbation_key='condition'), build the model, train(task='perturbation')."
            ),
            (
                "The perturbation-response head of this model was never trained (its predictions "
                "would be the control cells unchanged). Train it first: "
                "model.train(task='perturbation', max_epochs=...)."
            ),
        )
        if control_adata is None:
            adata = self.adata
            pool = np.flatnonzero(self._control_mask(adata))
        else:
            key = self._setup_args(self.adata)["perturbation_key"]
            if key in control_adata.obs.columns:
                perturbed = ~self._control_mask(control_adata)
                if perturbed.any():
                    raise ValueError(
                        f"control_adata holds {int(perturbed.sum())} perturbed cells (obs[{key!r}] is "
                        f"not the control value, e.g. {control_adata.obs[key][perturbed].astype(str).iloc[0]!r}); "
                        "predictions start from unperturbed cells. Pass only control cells: "
                        f"control_adata[control_adata.obs[{key!r}] == "
                        f"{self._setup_args(self.adata)['control_value']!r}]."
                    )
            adata = self._validate_anndata(control_adata)
            pool = np.arange(adata.n_obs)
        if len(pool) == 0:
            raise ValueError("No control cells to perturb: pass control_adata with control cells.")
        if n_cells < 1:
            raise ValueError(f"n_cells={n_cells} must be >= 1.")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(pool, size=min(n_cells, len(pool)), replace=False))
        x, batch = self._run_inference(
            adata,
            pick,
            batch_size,
            lambda b: (
                b["x"].float(),
                torch.zeros(len(b["x"]), dtype=torch.long) if b["batch"] is None else b["batch"],
            ),
        )
        return x, batch, adata, pick

    @torch.inference_mode()
    def _perturb_all(self, conditions, control_adata, n_cells, seed, batch_size):
        if isinstance(conditions, str):
            conditions = [conditions]
        conditions = list(conditions)
        if not conditions:
            raise ValueError("No conditions given.")
        setup = self._setup_args(self.adata)
        ctrl_value = setup["control_value"]
        names = [condition_name(self._parse(c), control_value=ctrl_value) for c in conditions]
        ids = torch.as_tensor(self._condition_gene_ids(names))
        x, batch, adata, pick = self._controls(control_adata, n_cells, seed, batch_size)
        with self._inference_context(self._panel(adata)):
            pred, cols = self.module.perturb_conditions(
                x.to(self.device), ids.to(self.device), batch.to(self.device), batch_size
            )
        pred, cols = pred.float().cpu().numpy(), cols.cpu().numpy()
        return names, pred, x[:, cols].numpy(), adata, pick, cols

    def predict_perturbation(
        self,
        conditions: str | Sequence[str],
        *,
        control_adata: AnnData | None = None,
        n_cells: int = 100,
        return_type: str = "mean",
        batch_size: int = 32,
        seed: int = 0,
    ) -> AnnData:
        """Predicted expression after genetic perturbations.

        Requires ``train(task="perturbation")`` first.

        Each of ``n_cells`` control cells is encoded with the condition's genes flagged as
        perturbed, and the response head predicts its expression afterwards. Works for
        conditions seen in training, unseen single genes and unseen combinations, as long
        as every gene has a token in the vocabulary: a model built on the data has tokens
        for every measured gene and for every gene named in the perturbation column, even
        when not measured.

        Parameters
        ----------
        conditions
            One condition or a list, GEARS notation (``"A+ctrl"``, ``"A+B"``) or gene
            symbols (``"A"``).
        control_adata
            Cells to perturb, all of them control cells (default: the control cells of the
            model's AnnData). Other gene panels work as for embeddings.
        n_cells
            Control cells sampled (without replacement; all if there are fewer).
        return_type
            ``"mean"``: one row per condition, the mean prediction over the cells;
            ``"cells"``: one row per (condition, control cell), the predicted response of
            that cell.
        batch_size
            Cells per forward pass (memory: all panel genes are tokens).
        seed
            Seed of the control-cell sample.

        Returns
        -------
        anndata.AnnData
            Predicted expression, in the units of the registered data (log-normalized),
            over the control data's genes that are in the vocabulary. ``obs`` has
            ``condition`` (canonical name), ``n_genes`` (perturbed), ``seen`` (a condition
            of the training data) and, for ``"cells"``, ``control_cell``; ``uns["control_mean"]``
            is the mean of the sampled control cells.

        Examples
        --------
        >>> pred = model.predict_perturbation(["G001+ctrl", "G001+G007"])  # doctest: +SKIP
        >>> pred.to_df().iloc[:, :3]  # doctest: +SKIP
        """
        if return_type not in ("mean", "cells"):
            raise ValueError(f"return_type={return_type!r}; use 'mean' or 'cells'.")
        names, pred, ctrl, adata, pick, cols = self._perturb_all(
            conditions, control_adata, n_cells, seed, batch_size
        )
        seen = set(self._registered_conditions() or [])
        var = adata.var.iloc[cols].copy()
        obs = pd.DataFrame(
            {
                "condition": names,
                "n_genes": [len(self._parse(n)) for n in names],
                "seen": [n in seen for n in names],
            }
        )
        if return_type == "mean":
            X = pred.mean(1)
            obs.index = pd.Index(names, dtype=str)
            if obs.index.has_duplicates:
                obs.index = pd.Index([f"{n}-{i}" for i, n in enumerate(names)])
        else:
            n = pred.shape[1]
            X = pred.reshape(len(names) * n, -1)
            obs = obs.loc[obs.index.repeat(n)].reset_index(drop=True)
            obs["control_cell"] = np.tile(adata.obs_names[pick].to_numpy(), len(names))
            obs.index = pd.Index(
                [
                    f"{c}|{cell}"
                    for c, cell in zip(obs["condition"], obs["control_cell"], strict=True)
                ]
            )
        result = AnnData(X=X.astype(np.float32), obs=obs, var=var)
        result.uns["control_mean"] = ctrl.mean(0).astype(np.float32)
        return result

    def get_perturbation_effects(
        self,
        conditions: str | Sequence[str],
        *,
        control_adata: AnnData | None = None,
        n_cells: int = 100,
        top_n: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Predicted change of each gene's expression per condition, against control.

        Parameters
        ----------
        conditions, control_adata, n_cells, batch_size, seed
            As for :meth:`predict_perturbation`.
        top_n
            Keep the ``top_n`` genes with the largest absolute change per condition
            (default: all genes).

        Returns
        -------
        pandas.DataFrame
            Long format, one row per (condition, gene): ``condition``, ``gene``,
            ``control_mean`` (the sampled control cells' mean), ``predicted_mean``,
            ``delta`` (predicted − control), sorted by ``|delta|`` within each condition.

        Examples
        --------
        >>> effects = model.get_perturbation_effects("G001+ctrl", top_n=20)  # doctest: +SKIP
        """
        pred = self.predict_perturbation(
            conditions,
            control_adata=control_adata,
            n_cells=n_cells,
            batch_size=batch_size,
            seed=seed,
        )
        ctrl = pred.uns["control_mean"]
        frames = []
        for i, name in enumerate(pred.obs["condition"]):
            df = pd.DataFrame(
                {
                    "condition": name,
                    "gene": pred.var_names.to_numpy(),
                    "control_mean": ctrl,
                    "predicted_mean": np.asarray(pred.X[i]).ravel(),
                }
            )
            df["delta"] = df["predicted_mean"] - df["control_mean"]
            df = df.reindex(df["delta"].abs().sort_values(ascending=False).index)
            frames.append(df if top_n is None else df.head(top_n))
        return pd.concat(frames, ignore_index=True)
