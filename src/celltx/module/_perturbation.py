"""Perturbation parts of :class:`~celltx.module.ScGPTModule`: conditions, control cells, responses."""

from __future__ import annotations

import torch

from celltx.data import TokenizedBatch

from ._host import ModuleHost


class PerturbationMixin(ModuleHost):
    """Registered conditions, stored control cells and the perturbation response."""

    def set_conditions(self, condition_genes: torch.Tensor) -> None:
        """Vocabulary ids ``(n_conditions, max_genes)`` of the perturbed genes.

        One row per registered condition (``-1``: none).
        """
        self.condition_genes = torch.as_tensor(
            condition_genes, dtype=torch.long, device=self.condition_genes.device
        ).reshape(len(condition_genes), -1)

    def pair_groups(self, batch: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Pairing group of each cell.

        A group is the cell's batch code and, with ``pair_by_labels``, its label code
        (unlabelled cells form a group of their own).
        """
        group = batch.reshape(-1).long()
        if self.pair_by_labels and labels is not None:
            group = group * (self.n_labels + 1) + labels.reshape(-1).long() + 1
        return group

    def n_pair_groups(self, n_batch: int) -> int:
        """Number of pairing groups for ``n_batch`` batches."""
        return max(n_batch, 1) * (self.n_labels + 1 if self.pair_by_labels else 1)

    def set_controls(self, x: torch.Tensor, groups: torch.Tensor, n_groups: int) -> None:
        """Store the control cells ``x`` ``(N, G)`` with their pairing groups ``(N,)``."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        order = torch.argsort(groups, stable=True)
        counts = torch.bincount(groups, minlength=n_groups)
        dev = self.ctrl_x.device
        self.ctrl_x = torch.as_tensor(x, dtype=torch.float32)[order].to(dev)
        self.ctrl_mean = self.ctrl_x.mean(0)
        self.ctrl_count = counts.to(dev)
        self.ctrl_start = (torch.cumsum(counts, 0) - counts).to(dev)

    def sample_controls(
        self, groups: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random control cell of the same pairing group for each entry of ``groups``.

        Any control cell where the group has none.
        """
        n = self.ctrl_x.shape[0]
        if n == 0:
            raise ValueError("No control cells are stored: train(task='perturbation') stores them.")
        groups = groups.to(self.ctrl_count.device).reshape(-1)
        inside = groups < len(self.ctrl_count)
        g = groups.clamp(max=len(self.ctrl_count) - 1)
        count = torch.where(inside, self.ctrl_count[g], 0)
        start = torch.where(count > 0, self.ctrl_start[g], 0)
        count = torch.where(count > 0, count, n)
        u = torch.rand(groups.shape, device=groups.device, generator=generator)
        idx = start + (u * count).long().clamp(max=count - 1)
        return self.ctrl_x[idx]

    def perturb_tokens(
        self, x_ctrl: torch.Tensor, pert_ids: torch.Tensor, ties: str = "hash"
    ) -> tuple[TokenizedBatch, torch.Tensor, torch.Tensor]:
        """Tokens of control cells under perturbation.

        Built with :func:`celltx.data.perturbation_tokens` over the module's gene panel. Returns
        the tokens, their flags ``(B, L)`` and the panel columns that the tokens after ``<cls>``
        stand for.
        """
        tokens, cols = self.tokenizer.perturbation(x_ctrl, pert_ids, ties=ties)
        assert tokens.pert_flags is not None  # perturbation tokens always carry their flags
        return tokens, tokens.pert_flags, cols

    @torch.inference_mode()
    def perturb_conditions(
        self,
        x_ctrl: torch.Tensor,
        condition_ids: torch.Tensor,
        batch: torch.Tensor,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted expression of the control cells ``x_ctrl`` ``(N, G)`` under each condition.

        ``condition_ids`` ``(C, P)``: vocabulary ids of each condition's perturbed genes
        (``-1`` = none); ``batch`` ``(N,)`` the cells' batch codes. The changes are added to
        the control cells' mean. Returns ``(C, N, G')`` predictions over the panel columns
        ``(G',)`` that are in the vocabulary, computed ``batch_size`` cells at a time.
        """
        if not len(condition_ids):
            raise ValueError("No conditions to predict (condition_ids is empty).")
        use_batch = self._batch(batch) is not None
        base = x_ctrl.mean(0)
        out: list[torch.Tensor] = []
        cols: torch.Tensor | None = None
        for ids in condition_ids:
            rows = []
            for lo in range(0, len(x_ctrl), batch_size):
                xc = x_ctrl[lo : lo + batch_size]
                b = batch[lo : lo + batch_size] if use_batch else None
                res = self.perturb(xc, ids.expand(len(xc), -1), b, base=base)
                rows.append(res["pert_pred"].float())
                cols = res["columns"]
            out.append(torch.cat(rows))
        assert cols is not None  # condition_ids is not empty
        return torch.stack(out), cols

    def perturb(
        self,
        x_ctrl: torch.Tensor,
        pert_ids: torch.Tensor,
        batch: torch.Tensor | None = None,
        ties: str = "hash",
        base: torch.Tensor | None = None,
    ) -> dict:
        """Predicted expression of control cells ``x_ctrl`` ``(B, G)`` after a perturbation.

        The perturbed genes are ``pert_ids`` ``(B, P)`` (vocabulary ids, ``-1`` = none).

        The prediction is ``base`` (``(G,)`` over all columns, e.g. the control mean;
        default: each control cell's own values) plus the response head's change.
        Returns ``pert_pred`` ``(B, G')`` over the panel columns ``columns`` (genes in the
        vocabulary), ``cell_emb`` and the tokens.
        """
        if self.pert_decoder is None:
            raise ValueError(
                "This model has no perturbation parts (set up perturbation_key, then build it)."
            )
        tokens, flags, cols = self.perturb_tokens(x_ctrl, pert_ids, ties=ties)
        h, gene_emb = self.transformer.encode(
            tokens.gene_ids,
            tokens.values,
            tokens.padding_mask,
            None,
            batch,
            flags,
            return_gene_emb=True,
        )
        hh = h[:, 1 : 1 + len(cols)]
        # the perturbation summary: the sum of the perturbed tokens' outputs (0 for control),
        # given to every gene's response so that it need not be found by attention alone;
        summary = (h * (flags == 1).unsqueeze(-1).to(h.dtype)).sum(1)
        # gene × perturbation interaction as an elementwise product (a concatenation alone
        # leaves it to the MLP's nonlinearity, which learns it far more slowly)
        parts = [hh, hh * summary[:, None, :]]
        if self.transformer.batch_encoder is not None:
            b = self.transformer.batch_encoder(batch)
            parts.append(b[:, None, :].expand(-1, hh.shape[1], -1))
        hh = torch.cat(parts, -1)
        start = (
            x_ctrl[:, cols].float() if base is None else base[cols].float().expand(len(x_ctrl), -1)
        )
        pred = start + self.pert_decoder(hh).float()
        return {
            "pert_pred": pred,
            "columns": cols,
            "cell_emb": h[:, 0],
            "h": h,
            "gene_emb": gene_emb,
            "tokens": tokens,
            "known": None,
        }
