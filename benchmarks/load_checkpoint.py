"""Time to load a scGPT_human-sized checkpoint with celltx.

Writes a model directory with scGPT_human's shape into a temporary folder — a
60,697-token ``vocab.json`` (the pbmc68k genes plus generated names, then ``<pad>``,
``<cls>``, ``<eoc>``, as the published vocabulary), ``args.json`` (embsize 512, nheads 8,
nlayers 12, d_hid 512) and random weights in the official flash-attn layout, including a
3-layer classifier head as in the published files (about 52M parameters, 200 MB) — and
times each step of loading it:

``vocab.json``
    :meth:`celltx.data.GeneVocab.from_file` (JSON parse + checks + index).
``weights``
    :func:`celltx.io.read_weights` (``torch.load(weights_only=True)``) or safetensors.
``read_scgpt_dir``
    Both of the above plus ``args.json``, layout detection and renaming.
``load_pretrained``
    The whole :meth:`celltx.model.ScGPT.load_pretrained` on pbmc68k (700 cells × 765
    genes): AnnData registration, gene matching, building the 52M-parameter model,
    checking and copying every tensor.
``first embedding``
    ``get_latent_representation`` of 64 cells right after loading (all expressed genes,
    ≤ 410 tokens each), to show the model is usable.

Each step is run ``--repeats`` times (default 3) after one untimed warm-up; the table
shows the median and the minimum wall time. Numbers depend on the machine, disk cache and
thread count; the script only measures and prints.

Run from the repository root::

    python benchmarks/load_checkpoint.py
    python benchmarks/load_checkpoint.py --safetensors --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import celltx
from celltx.data import GeneVocab
from celltx.io import read_scgpt_dir, read_weights, to_scgpt
from celltx.nn import ClsDecoder, ScGPTConfig, ScGPTTransformer

N_TOKENS = 60_697
HUMAN = ScGPTConfig.preset("scgpt_human")
SHAPE = {
    "embsize": HUMAN.d_model,
    "nheads": HUMAN.n_heads,
    "nlayers": HUMAN.n_layers,
    "d_hid": HUMAN.d_hid_resolved,
}


def write_human_sized_checkpoint(
    out: Path, safetensors: bool = False, genes: list[str] | None = None
) -> int:
    """Write a scGPT_human-shaped model directory; returns the number of parameters.

    The vocabulary starts with ``genes`` (default: the pbmc68k genes) and is filled up to
    60,697 tokens with generated names.
    """
    out.mkdir(parents=True, exist_ok=True)
    genes = list(celltx.datasets.pbmc68k().var_names if genes is None else genes)
    genes += [f"GENE{i:05d}" for i in range(N_TOKENS - 3 - len(genes))]
    GeneVocab.from_genes(genes).save(out / "vocab.json")
    args = {
        **SHAPE,
        "dropout": HUMAN.dropout,
        "n_layers_cls": HUMAN.n_layers_cls,
        "n_bins": HUMAN.n_bins,
        "pad_token": "<pad>",
        "pad_value": HUMAN.pad_value,
        "mask_value": -1,
        "input_emb_style": HUMAN.input_emb_style,
        "cell_emb_style": "cls",
        "max_seq_len": HUMAN.max_seq_len,
        "mask_ratio": list(HUMAN.mask_ratio),
    }
    (out / "args.json").write_text(json.dumps(args))
    torch.manual_seed(0)
    net = ScGPTTransformer(HUMAN, n_tokens=N_TOKENS, pad_id=N_TOKENS - 3)
    sd = {k: v.contiguous() for k, v in to_scgpt(net.state_dict(), "official").items()}
    sd.update(
        {
            f"cls_decoder.{k}": v
            for k, v in ClsDecoder(HUMAN.d_model, 1, HUMAN.n_layers_cls).state_dict().items()
        }
    )
    if safetensors:
        from safetensors.torch import save_file

        save_file(sd, str(out / "best_model.safetensors"))
    else:
        torch.save(sd, out / "best_model.pt")
    return sum(v.numel() for v in sd.values())


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (imports, disk cache)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--safetensors", action="store_true", help="weights as .safetensors")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import logging

    logging.getLogger("scvi").setLevel(logging.WARNING)
    adata = celltx.datasets.pbmc68k()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "scgpt_human_shape"
        n_params = write_human_sized_checkpoint(d, a.safetensors)
        wfile = next(d.glob("best_model.*"))
        size_mb = wfile.stat().st_size / 2**20
        holder = {}

        def load():
            holder["model"] = celltx.model.ScGPT.load_pretrained(d, adata.copy(), accelerator="cpu")

        rows = [
            ("vocab.json", _time(lambda: GeneVocab.from_file(d / "vocab.json"), a.repeats)),
            ("weights", _time(lambda: read_weights(wfile), a.repeats)),
            ("read_scgpt_dir", _time(lambda: read_scgpt_dir(d), a.repeats)),
            ("load_pretrained", _time(load, a.repeats)),
            (
                "first embedding (64 cells)",
                _time(
                    lambda: holder["model"].get_latent_representation(
                        indices=range(64), batch_size=32
                    ),
                    a.repeats,
                ),
            ),
        ]
    print(
        f"\nscGPT_human-shaped checkpoint: {N_TOKENS:,} tokens, {n_params / 1e6:.1f}M parameters, "
        f"{wfile.name} {size_mb:.0f} MiB; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| step | median s | min s |")
    print("|---|---:|---:|")
    for name, (med, mn) in rows:
        print(f"| {name} | {med:.3f} | {mn:.3f} |")


if __name__ == "__main__":
    main()
