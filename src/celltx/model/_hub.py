"""Sharing models through scvi-tools' hub (:class:`scvi.hub.HubModel`, Hugging Face)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._host import ModelHost

if TYPE_CHECKING:
    from anndata import AnnData
    from scvi.hub import HubModel

#: files a hub directory of a celltx model must hold (scvi-tools' metadata, celltx's save)
HUB_METADATA = "_scvi_required_metadata.json"
HUB_CARD = "README.md"


def _hub_api():
    try:
        from scvi.hub import HubMetadata, HubModel
    except ImportError as e:  # scvi.hub needs huggingface_hub
        raise ImportError(
            "Sharing models through the hub needs huggingface_hub: pip install 'celltx[hub]' "
            "(or pip install huggingface_hub)."
        ) from e
    return HubMetadata, HubModel


def check_hub_dir(
    local_dir: str | os.PathLike, prefix: str = "", cls_name: str | None = None
) -> None:
    """Refuse a directory that is not a hub directory of a celltx model, naming what is missing.

    ``cls_name``: the model class the metadata must name.
    """
    d = Path(local_dir)
    if not d.is_dir():
        raise ValueError(f"{d} is not a directory; pass the folder that to_hub wrote (or pulled).")
    missing = [
        n
        for n in (HUB_METADATA, f"{prefix}model.json", f"{prefix}model.safetensors")
        if not (d / n).is_file()
    ]
    if missing:
        hint = (
            " It holds a pickled model.pt (a plain scvi-tools model?), which celltx does not load "
            "from the hub."
            if (d / "model.pt").is_file()
            else ""
        )
        raise ValueError(
            f"{d} is not a celltx hub directory: {missing} missing.{hint} Write one with "
            "model.to_hub(local_dir), or pull it with ScGPT.from_hub(repo_name)."
        )
    try:
        meta = json.loads((d / HUB_METADATA).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{d / HUB_METADATA} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"{d / HUB_METADATA} is not a JSON object (it holds a {type(meta).__name__}): the "
            "metadata is damaged or was edited. Write the directory again with model.to_hub()."
        )
    if meta.get("model_parent_module") != "celltx.model":
        raise ValueError(
            f"{d / HUB_METADATA} describes a {meta.get('model_parent_module')}."
            f"{meta.get('model_cls_name')} model, not a celltx model."
        )
    if cls_name is not None and meta.get("model_cls_name") != cls_name:
        raise ValueError(
            f"{d / HUB_METADATA} names the class model_cls_name="
            f"{meta.get('model_cls_name')!r}; this directory can only be loaded as a celltx "
            f"{cls_name}. Write it again with model.to_hub()."
        )


class HubMixin(ModelHost):
    """Push models to and pull them from the Hugging Face hub through scvi-tools' hub.

    A hub directory holds the safe save of :meth:`save` (safetensors + JSON, nothing is
    unpickled on load), scvi-tools' hub metadata (``_scvi_required_metadata.json``, with
    ``model_parent_module="celltx.model"`` so that :class:`scvi.hub.HubModel` finds the class)
    and a model card (``README.md``) describing the model, its training data and the celltx
    version.
    """

    def to_hub(
        self,
        local_dir: str | os.PathLike,
        *,
        license_info: str = "cc-by-4.0",
        description: str | None = None,
        training_data_url: str | None = None,
        training_code_url: str | None = None,
        tissues: list[str] | None = None,
        save_anndata: bool = False,
        overwrite: bool = False,
    ) -> HubModel:
        """Write the model as an scvi-tools hub directory and return its :class:`~scvi.hub.HubModel`.

        Push it with ``hub_model.push_to_huggingface_hub(repo_name, repo_token)``.

        Parameters
        ----------
        local_dir
            Directory to write (the model, metadata and model card).
        license_info
            License of the model (a Hugging Face license id).
        description
            Text for the model card (default: a summary of the model and its training data).
        training_data_url, training_code_url
            Where the training data and code are (linked from the model card).
        tissues
            Tissues of the training data (model card).
        save_anndata
            Also store the training AnnData / MuData (then :meth:`from_hub` needs no data).
        overwrite
            Replace an existing directory's files.

        Returns
        -------
        scvi.hub.HubModel

        Examples
        --------
        >>> hub_model = model.to_hub("pbmc_scgpt_hub", training_data_url="https://...")  # doctest: +SKIP
        >>> hub_model.push_to_huggingface_hub("me/pbmc-scgpt", repo_token="hf_...")  # doctest: +SKIP
        """
        import anndata
        import scvi

        import celltx

        HubMetadata, HubModel = _hub_api()
        self.save(local_dir, overwrite=overwrite, save_anndata=save_anndata)
        registry = self.adata_manager.registry
        setup = dict(registry["setup_args"])
        stats = {k: int(v) for k, v in self.summary_stats.items()}
        data_registry = {
            k: {"attr_name": v.attr_name, "attr_key": v.attr_key}
            for k, v in self.adata_manager.data_registry.items()
        }
        modalities = ["rna"] if "rna" in self.module.modalities else []
        modalities += ["atac"] if "atac" in self.module.modalities else []
        summary = self._model_summary_string.replace("\n", " ")
        text = description or (
            f"celltx {celltx.__version__} ScGPT model ({summary}). Trained on "
            f"{self.adata.n_obs} cells; setup arguments {json.dumps(_plain(setup))}. Saved in "
            "celltx's safe format (weights as safetensors, everything else as JSON): "
            "`celltx.model.ScGPT.from_hub(...)` or `scvi.hub.HubModel(...).load_model(adata)` "
            "loads it without unpickling anything."
        )
        meta = HubMetadata(
            scvi_version=scvi.__version__,
            anndata_version=anndata.__version__,
            model_cls_name=type(self).__name__,
            training_data_url=training_data_url,
            model_parent_module="celltx.model",
        )
        card = _model_card(
            license_info=license_info,
            description=text,
            init_params=_plain(
                {
                    **self.init_params_["non_kwargs"],
                    "vocab": f"{len(self.vocab)} tokens (model.json)",
                }
                | self.init_params_["kwargs"]
            ),
            setup=_plain(setup),
            stats=stats,
            data_registry=data_registry,
            modalities=modalities,
            tissues=list(tissues or []),
            training_data_url=training_data_url,
            training_code_url=training_code_url,
        )
        hub_model = HubModel(str(local_dir), metadata=meta, model_card=card)
        hub_model.save(overwrite=True)
        return hub_model

    @classmethod
    def from_hub(
        cls,
        source: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        cache_dir: str | None = None,
        revision: str | None = None,
        pull_anndata: bool = True,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """Load a model shared through the hub: a local hub directory or a Hugging Face repo.

        Parameters
        ----------
        source
            A directory written by :meth:`to_hub` (or pulled before), or a repo name such as
            ``"me/pbmc-scgpt"``, downloaded with ``huggingface_hub.snapshot_download`` (scvi-tools'
            ``HubModel.pull_from_huggingface_hub`` fetches a pickled ``model.pt`` only).
        adata
            Data to load the model on (default: the AnnData stored in the hub directory).
        cache_dir, revision
            Passed to the download.
        pull_anndata
            Also download the stored training data (when the repo has it).
        accelerator, device
            Where to put the model.

        Returns
        -------
        ScGPT

        Examples
        --------
        >>> model = celltx.model.ScGPT.from_hub("me/pbmc-scgpt", adata)  # doctest: +SKIP
        """
        if Path(source).is_dir():
            local = str(source)
        else:
            _hub_api()  # a clear error without huggingface_hub
            # scvi-tools' HubModel.pull_from_huggingface_hub fetches only a pickled model.pt:
            # download the files of celltx's safe format instead
            import huggingface_hub

            local = huggingface_hub.snapshot_download(
                repo_id=str(source),
                allow_patterns=[
                    HUB_METADATA,
                    HUB_CARD,
                    "model.json",
                    "model.safetensors",
                    *(["adata.h5ad", "mdata.h5mu"] if pull_anndata else []),
                ],
                cache_dir=cache_dir,
                revision=revision,
            )
        check_hub_dir(local, cls_name=cls.__name__)
        if adata is None and not any(
            (Path(local) / name).is_file() for name in ("adata.h5ad", "mdata.h5mu")
        ):
            # scvi-tools' HubModel would now download the metadata's training_data_url: a
            # hub directory is loaded from its own files only
            raise ValueError(
                f"{local} holds no stored data (no adata.h5ad / mdata.h5mu; to_hub(..., "
                "save_anndata=True) stores it): pass the data to load the model on, "
                "ScGPT.from_hub(source, adata)."
            )
        # what HubModel.load_model does with data at hand, without its download fallback
        model = cls.load(local, adata=adata, accelerator=accelerator, device=device)
        if not isinstance(model, cls):
            raise ValueError(f"{local} holds a {type(model).__name__}, not a {cls.__name__}.")
        return model


def _model_card(
    *,
    license_info,
    description,
    init_params,
    setup,
    stats,
    data_registry,
    modalities,
    tissues,
    training_data_url,
    training_code_url,
):
    """The Hugging Face model card of a celltx model.

    scvi-tools' card template knows only scvi-tools' own classes, so celltx writes its own.
    """
    from huggingface_hub import ModelCard, ModelCardData

    import celltx

    tags = [
        "biology",
        "genomics",
        "single-cell",
        "foundation-model",
        "scGPT",
        "model_cls_name:ScGPT",
        f"celltx_version:{celltx.__version__}",
        *[f"modality:{m}" for m in modalities],
        *[f"tissue:{t}" for t in tissues],
    ]
    data = ModelCardData(license=license_info, library_name="scvi-tools", tags=tags)
    registry = "\n".join(
        f"| {k} | {v['attr_name']} | {v['attr_key']} |" for k, v in data_registry.items()
    )
    text = f"""---
{data.to_yaml()}
---

# ScGPT (celltx)

{description}

## Load

```python
import celltx
model = celltx.model.ScGPT.from_hub("<repo or local directory>", adata)  # adata: optional
```

or through scvi-tools: `scvi.hub.HubModel.pull_from_huggingface_hub(repo).load_model(adata)`
(with celltx installed). Nothing is unpickled: the weights are `model.safetensors`, everything
else `model.json`.

## Model init parameters

```json
{json.dumps(init_params, indent=2)}
```

## Setup arguments

```json
{json.dumps(setup, indent=2)}
```

## Summary statistics

```json
{json.dumps(stats, indent=2)}
```

## Data registry

| registry key | attribute | key |
|---|---|---|
{registry}

## Training data

{training_data_url or "Not given."}

## Training code

{training_code_url or "Not given."}
"""
    return ModelCard(text)


def _plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists (for the card)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
