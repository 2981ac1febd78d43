"""Parameter descriptions shared by several methods, filled into their docstrings.

A docstring names a shared parameter as ``%(name)s`` on its own line (in place of the
parameter's name and description); :func:`doc_params` replaces it with the text below, as
scvi-tools' ``setup_anndata_dsp`` does for its models.
"""

from __future__ import annotations

import re
import textwrap

PARAMS = {
    "adata": """adata
    AnnData (default: the one the model was built with). Set up automatically from the
    model's registry if it was not; another gene panel works (genes are matched to the
    vocabulary by name, the others ignored).""",
    "indices": """indices
    Cells to use (default all): integer positions, in any order and with repeats (the
    result follows them; negative ones count from the end), or a boolean mask with one
    value per cell. An empty selection, positions out of range and a mask of another
    length raise a ``ValueError``.""",
    "batch_size": """batch_size
    Cells per forward pass, a positive integer (default: scvi-tools' ``settings.batch_size``).""",
    "max_seq_len": """max_seq_len
    Tokens per cell for this call (e.g. the cells' largest number of expressed genes + 1 to
    use every gene); default: the model's ``max_seq_len``.""",
    "batch_key": """batch_key
    Column with batches (``obs``; for a MuData, ``mdata.obs`` or the modality named in
    ``modalities["batch_key"]``).""",
    "labels_key": """labels_key
    Column with cell-type labels (NaN = unlabelled).""",
    "gene_symbols": """gene_symbols
    ``var`` column (of the RNA modality) with gene symbols, when ``var_names`` are not the
    names the vocabulary uses (e.g. Ensembl IDs). For Ensembl IDs without such a column,
    make one offline: ``adata.var["symbol"] =
    celltx.data.ensembl_to_symbol(adata.var_names).to_numpy()`` and pass
    ``gene_symbols="symbol"`` (see :func:`celltx.data.ensembl_to_symbol`).""",
    # the parameters of ScGPT.train
    "train": """max_epochs
    Epochs; ``None`` uses scvi-tools' heuristic from the number of cells.
batch_size
    Cells per step (per device).
lr
    Peak learning rate (default 1e-3, see :class:`~celltx.train.PretrainingPlan`).
accelerator, devices
    Lightning device selection (``"cpu"``, ``"gpu"``, ``"auto"``).
train_size, validation_size
    Split of cells into training and validation.
early_stopping
    Stop when ``early_stopping_monitor`` (default ``"elbo_validation"``, the
    validation loss) stops improving; ``early_stopping_patience`` etc. pass through.
check_val_every_n_epoch
    Validation frequency (``None``: only with early stopping).
plan_kwargs
    Arguments of :class:`~celltx.train.PretrainingPlan`.
datasplitter_kwargs
    Arguments of scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
task
    A task of :data:`~celltx.model.TASK_REGISTRY` (its parts and weights, what it needs;
    add one with :func:`~celltx.model.register_task`): ``"generative"`` (gene- and
    cell-prompt generation with the config's ``gep_weight`` / ``mvc_weight``, the default
    for a new model), ``"annotation"`` (cross-entropy of the classifier on the ``<cls>``
    embedding of whole cells; needs ``labels_key``), ``"integration"`` (the contrastive
    loss with neighbour positives, CLAIRE-style: each cell's nearest neighbours within its
    batch and its mutual nearest neighbours in other batches, found in the input's PCA,
    count as positives besides its own second view; needs ``batch_key``; see the model's
    ``contrast_*`` settings), ``"integration_scgpt"`` (scGPT's recipe: generation + elastic
    cell similarity ×10 + the adversarial batch discriminator when built with ``dab=True``;
    needs ``batch_key``), ``"contrastive"`` (InfoNCE between two views of each cell, each
    with its own random known / unknown split; add ``loss_weights={"gep": 1, "mvc": 1}`` to
    generate as well, as CellLM does), ``"cell_text"`` (LangCell's cell–text alignment: each
    labelled cell against its label's Cell Ontology text; needs ``labels_key`` and
    ``celltx[text]``; see :meth:`predict_zero_shot`). ``None`` keeps the objective of the
    previous call.
loss_weights
    Override single weights of the preset: ``gep``, ``mvc``, ``cls``, ``ecs``,
    ``dab``, ``contrast``, ``text`` (or a registered part), and ``ecs_threshold``
    (default: the config's ``ecs_threshold``; kept by later calls).
class_weight
    Classification and cell–text alignment: ``"balanced"`` weighs each class by ``n_cells /
    (n_classes × n_class_cells)`` over the labelled training cells, or a
    ``{label: weight}`` dict; ``None``: equal weights.
label_smoothing
    Classification only: label smoothing of the cross-entropy.
freeze_layers
    Keep the gene / value embeddings and the first ``freeze_layers`` transformer
    layers fixed during this call (``-1``: all of them, train only the heads).
chunk_size
    With a contrastive part (``task="contrastive"``, ``"integration"``, or ``"multiome"``:
    the RNA ``contrast`` part or the cross-modal ``cross_modal`` one): CellLM's
    divide-and-conquer training (:class:`~celltx.train.ContrastivePlan`). Each
    ``batch_size`` minibatch is the contrastive batch (every pair of its cells is
    compared), encoded ``chunk_size`` cells at a time, so memory follows ``chunk_size``
    and the contrastive batch can be thousands of cells. ``None``: one pass per minibatch.
gradient_checkpointing
    Recompute each transformer layer's activations in the backward pass instead of
    keeping them (for long sequences or large batches): less memory, about a third
    more compute; gradients are unchanged. For this call only.
compile
    Compile the transformer layers with :func:`torch.compile` (``dynamic=True``)
    before training; they stay compiled for later calls and inference. Compiling
    takes tens of seconds; it pays off on GPUs and long runs. Dropout masks then come
    from the compiler's random numbers, so a run is not bit-identical to eager mode.
checkpoint_every
    Write a checkpoint every this many optimizer steps into ``checkpoint_dir``
    (default ``<scvi.settings.logging_dir>/checkpoints``): Lightning's
    ``step=N.ckpt`` (weights, optimizer and scheduler state, loop position) plus a
    celltx save of the model at that step (``step=N/``, loadable with :meth:`load`).
    The latest is kept. Resume an interrupted run with the same arguments plus
    ``ckpt_path="<checkpoint_dir>/step=N.ckpt"`` (read with
    :func:`celltx.io.read_checkpoint`, then by Lightning with
    ``weights_only=True``; nothing is unpickled, a file holding other objects is
    refused).
checkpoint_dir
    Directory of the checkpoints of ``checkpoint_every``.
datamodule
    Train from scvi-tools' :class:`~scvi.dataloaders.TileDBDataModule` over a SOMA
    experiment (``pip install 'celltx[soma]'``) or its
    :class:`~scvi.dataloaders.MappedCollectionDataModule` over a lamindb collection
    instead of the AnnData: its batches, shuffling and train / validation split (SOMA:
    its ``train_size``; lamindb: its ``collection_val``) are used, so ``batch_size``,
    ``train_size``, ``validation_size`` and ``datasplitter_kwargs`` do not apply. Its
    genes are matched to the vocabulary by name (SOMA: ``var`` column
    :attr:`gene_column`; lamindb: the collection's joined ``var_names``). Generative
    objectives only (``gep``, ``mvc``, ``ecs``) on RNA models without batch-aware
    parts.
batch_tokens
    Token-budget batches for training: the cells are grouped by sequence length into
    batches of at most ``batch_tokens`` padded tokens (``batch_size`` caps the cells
    of a batch), regrouped at random every epoch (:class:`TokenBudgetSplitter`).
    Less padding, so more cells per second on cells of mixed length; the number of
    cells per step varies. Not with DDP or a datamodule. ``None``: batches of
    ``batch_size`` cells.
**trainer_kwargs
    Passed to Lightning's trainer through :class:`~scvi.train.Trainer`
    (``ckpt_path`` resumes from a checkpoint).""",
}

_MARK = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def doc_params(func):
    """Fill the ``%(name)s`` lines of ``func``'s docstring from :data:`PARAMS`."""
    if func.__doc__:
        func.__doc__ = _MARK.sub(
            lambda m: textwrap.indent(PARAMS[m.group("name")], m.group("indent")), func.__doc__
        )
    return func
