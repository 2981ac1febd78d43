"""Throughput and memory of celltx's scGPT implementation.

Measures, for each configuration, four phases and prints a markdown table:

``tokenize (random)`` / ``tokenize (hash)``
    ``model.module.tokenize(x, sample=...)`` on dense ``float32`` batches already on the
    device (densifying the sparse rows is not timed).
``train step``
    Optimizer steps of the real pretraining objective (attention-masked generative loss,
    gene-prompt + MVC) on the module directly: forward, ``loss.backward()``, AdamW step.
    Warm-up steps are run first and not timed (they are in the memory window, so the
    optimizer state is counted). On CUDA the forward runs under ``bf16`` autocast.
``embed``
    ``model.get_latent_representation(adata, batch_size=...)`` over the whole AnnData,
    timed end to end (includes scvi-tools' data loading and densifying), after a one-batch
    warm-up call.

Configurations
--------------
``small``
    d_model 64, 2 layers, 4 heads, max_seq_len 256 on ``celltx.datasets.pbmc68k()``
    (700 cells × 765 genes, log-normalized).
``scgpt_human``
    The scGPT_human shape (d_model 512, 12 layers, 8 heads, d_hid 512, max_seq_len 1200)
    on simulated counts: 5,000 genes, 1,500-2,500 expressed genes per cell, so every
    sequence is full length.

``cells/s`` counts cells; ``tokens/s`` counts non-padding tokens (``<cls>`` included).
Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` during the phase (absolute:
includes weights and the data already on the GPU); on CPU the peak resident set size
(RSS, sampled every 10 ms with psutil) minus the RSS just before the phase, so memory the
allocator kept from an earlier phase is not counted again.

Run from the repository root::

    python benchmarks/throughput.py                        # both configs, auto device
    python benchmarks/throughput.py --configs small        # pbmc68k only
    python benchmarks/throughput.py --configs scgpt_human --n-cells 64 --steps 3
    python benchmarks/throughput.py --device cuda          # GPU, bf16 autocast, with MFU
    python benchmarks/throughput.py --peak-tflops 2.0      # MFU against a given peak
    python benchmarks/throughput.py --quick                # smoke test, tiny settings
    python benchmarks/throughput.py --threads 1            # fix torch's thread count

On a CPU shared with other busy processes, use ``--threads`` no larger than the free
cores: oversubscribed OpenMP threads make small operations (tokenization) many times
slower.

The numbers are specific to the machine, its load, the thread count and the library
versions; compare them only between runs on the same machine. The script only measures
and prints; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import platform
import resource
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

try:
    import psutil
except ImportError:  # pragma: no cover - fall back to ru_maxrss
    psutil = None

#: model shapes measured: names in celltx.nn.PRESETS
CONFIGS = ("small", "scgpt_human")


# --- environment ------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def precision(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16 autocast (weights and optimizer fp32)"
    return "fp32"


# --- peak memory ------------------------------------------------------------------------
def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _load_libc()


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc
    ``malloc_trim``), so that RSS before a phase does not already hold memory an earlier
    phase freed (the phase would then show no growth)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakMemory:
    """Peak memory of a phase in MiB (see the module docstring for what is measured)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def method(device: torch.device) -> str:
        if device.type == "cuda":
            return "torch.cuda.max_memory_allocated() during the phase (absolute)"
        if psutil is not None:
            trim = ", after glibc malloc_trim(0)" if _LIBC is not None else ""
            return f"peak RSS (psutil, sampled every 10 ms) minus RSS before the phase{trim}"
        return (
            "increase of the process's lifetime peak RSS (ru_maxrss; psutil missing): "
            "coarse, 0 when a phase stays below an earlier peak"
        )

    def _sample(self, proc) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self):
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif psutil is not None:
            proc = psutil.Process()
            self.base = self.peak = proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(proc,), daemon=True)
            self._thread.start()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif psutil is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
            self.mib = (self.peak - self.base) / 2**20
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024
        return False


# --- data -------------------------------------------------------------------------------
def simulate_counts(n_cells: int, n_genes: int = 5000, seed: int = 0):
    """Sparse CSR counts: each cell expresses 1,500-2,500 genes (negative binomial + 1)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(mean=0.5, sigma=1.0, size=n_genes)  # per-gene mean count
    n_expr = rng.integers(1500, 2501, size=n_cells)
    indptr = np.concatenate([[0], np.cumsum(n_expr)])
    indices = np.empty(indptr[-1], dtype=np.int32)
    for i in range(n_cells):
        indices[indptr[i] : indptr[i + 1]] = np.sort(
            rng.choice(n_genes, size=n_expr[i], replace=False)
        )
    mu = gene_mean[indices]
    r = 2.0  # NB dispersion; mean of the NB part = mu
    data = (1 + rng.negative_binomial(r, r / (r + mu))).astype(np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    return ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
    )


def load_data(config: str, n_cells: int | None):
    import celltx

    if config == "small":
        adata = celltx.datasets.pbmc68k()
        if n_cells is not None and n_cells < adata.n_obs:
            adata = adata[:n_cells].copy()
        return adata
    return simulate_counts(n_cells)


def dense_batches(adata, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    X = adata.X
    out = []
    for start in range(0, adata.n_obs, batch_size):
        rows = X[start : start + batch_size]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        out.append(torch.as_tensor(rows, dtype=torch.float32).to(device))
    return out


def tokens_per_cell(model, adata, max_seq_len: int) -> np.ndarray:
    """Non-padding tokens of each cell: ``<cls>`` + its expressed vocabulary genes, capped."""
    from celltx.data import match_genes

    known = match_genes(adata, model.vocab).ids >= 0  # registered without gene_symbols
    X = adata.X[:, known]
    nnz = np.asarray((X > 0).sum(1)).ravel()
    return 1 + np.minimum(nnz, max_seq_len - 1)


# --- phases -----------------------------------------------------------------------------
@dataclass
class Row:
    config: str
    phase: str
    batch: int
    cells_per_s: float
    tokens_per_s: float
    peak_mib: float
    mfu: float = float("nan")


#: dense bf16 peak TFLOP/s of GPUs by name (vendor data sheets; no sparsity)
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def peak_tflops(device: torch.device, given: float | None) -> float:
    """The device's peak TFLOP/s: ``given``, or looked up by GPU name (NaN if unknown)."""
    if given is not None:
        return given
    if device.type != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


def flops_per_token(model, seq_len: float, train: bool) -> float:
    """Model FLOPs per token: 2 N + 4 n_layers L d forward (N = non-embedding parameters,
    L = mean tokens per sequence; the attention term counts QK^T and AV), 3× that for a
    training step (forward + backward), as in the PaLM paper's MFU."""
    t = model.module.transformer
    emb = sum(p.numel() for p in t.encoder.embedding.parameters())
    n = sum(p.numel() for p in model.module.parameters()) - emb
    cfg = model.config
    fwd = 2 * n + 4 * cfg.n_layers * seq_len * cfg.d_model
    return (3 if train else 1) * fwd


def bench_tokenize(model, batches, sample: str, device) -> tuple[float, float, float]:
    module = model.module
    with torch.no_grad():
        module.tokenize(batches[0], sample=sample)  # warm-up
        sync(device)
        with PeakMemory(device) as mem:
            n_tok = torch.zeros((), dtype=torch.long, device=device)
            n_cells = 0
            t0 = time.perf_counter()
            for x in batches:
                tok = module.tokenize(x, sample=sample)
                n_tok += (~tok.padding_mask).sum()
                n_cells += x.shape[0]
            sync(device)
            dt = time.perf_counter() - t0
    return n_cells / dt, int(n_tok) / dt, mem.mib


def bench_train(model, batches, steps: int, warmup: int, device) -> tuple[float, float, float]:
    from scvi import REGISTRY_KEYS

    module = model.module
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step(x):
        with autocast(device):
            inf, _, loss = module({REGISTRY_KEYS.X_KEY: x})
        loss.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return (~inf["tokens"].padding_mask).sum()

    with PeakMemory(device) as mem:
        for i in range(warmup):
            step(batches[i % len(batches)])
        sync(device)
        n_tok = torch.zeros((), dtype=torch.long, device=device)
        n_cells = 0
        t0 = time.perf_counter()
        for i in range(steps):
            x = batches[(warmup + i) % len(batches)]
            n_tok += step(x)
            n_cells += x.shape[0]
        sync(device)
        dt = time.perf_counter() - t0
    module.eval()
    return n_cells / dt, int(n_tok) / dt, mem.mib


def bench_embed(model, adata, batch_size: int, n_tok: int, device) -> tuple[float, float, float]:
    model.get_latent_representation(
        adata, indices=np.arange(min(batch_size, adata.n_obs)), batch_size=batch_size
    )  # warm-up
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        model.get_latent_representation(adata, batch_size=batch_size)
        sync(device)
        dt = time.perf_counter() - t0
    return adata.n_obs / dt, n_tok / dt, mem.mib


def run_config(name: str, args, device: torch.device) -> tuple[list[Row], str]:
    import celltx

    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (32 if name == "small" or on_gpu else 8)
    steps = args.steps or (5 if name == "scgpt_human" and not on_gpu else 20)
    warmup = (
        args.warmup
        if args.warmup is not None
        else (1 if name == "scgpt_human" and not on_gpu else 2)
    )
    n_cells = args.n_cells or (4096 if on_gpu else 256)
    if args.quick:
        steps, n_cells, warmup = 2, 32, 1
        batch_size = min(batch_size, 4)

    adata = load_data(name, n_cells if (name == "scgpt_human" or args.quick) else None)
    cfg = celltx.nn.preset(name)
    celltx.model.ScGPT.setup_anndata(adata)
    torch.manual_seed(0)
    model = celltx.model.ScGPT(adata, **cfg)
    model.to_device(device)
    model.module.eval()

    batches = dense_batches(adata, batch_size, device)
    tok_cell = tokens_per_cell(model, adata, cfg["max_seq_len"])
    n_params = sum(p.numel() for p in model.module.parameters())
    info = (
        f"{name}: {adata.n_obs} cells × {adata.n_vars} genes, "
        f"{n_params / 1e6:.2f}M parameters, tokens/cell mean {tok_cell.mean():.0f} "
        f"(min {tok_cell.min()}, max {tok_cell.max()}), batch {batch_size}, "
        f"train: {warmup} warm-up + {steps} timed steps"
    )
    print(info, flush=True)

    rows = []
    for sample in ("random", "hash"):
        c, t, m = bench_tokenize(model, batches, sample, device)
        rows.append(Row(name, f"tokenize ({sample})", batch_size, c, t, m))
        print(f"  {rows[-1].phase}: {c:.1f} cells/s", flush=True)
    peak = peak_tflops(device, args.peak_tflops) * 1e12
    L = float(tok_cell.mean())
    c, t, m = bench_train(model, batches, steps, warmup, device)
    mfu = t * flops_per_token(model, L, train=True) / peak
    rows.append(Row(name, "train step", batch_size, c, t, m, mfu))
    print(f"  train step: {c:.2f} cells/s", flush=True)
    c, t, m = bench_embed(model, adata, batch_size, int(tok_cell.sum()), device)
    mfu = t * flops_per_token(model, L, train=False) / peak
    rows.append(Row(name, "embed (get_latent_representation)", batch_size, c, t, m, mfu))
    print(f"  embed: {c:.2f} cells/s", flush=True)

    del model, batches
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return rows, info


def fmt(v: float) -> str:
    if v != v:  # nan
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cells per batch (default: small 32; scgpt_human 8 on CPU, 32 on GPU)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps (default: 5 for scgpt_human on CPU, else 20)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed training warm-up steps (default: 1 for scgpt_human on CPU, else 2)",
    )
    p.add_argument(
        "--n-cells",
        type=int,
        default=None,
        help="cells of the simulated scgpt_human data (default: 256 on CPU, 4096 on GPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s for MFU (default: looked up for known GPUs in bf16; "
        "n/a on CPU)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 32 cells, 1 warm-up + 2 steps, batch <= 4",
    )
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            p.error("--device cuda but torch.cuda.is_available() is False")
        device = torch.device(args.device)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    import celltx

    print(f"device: {device.type} ({device_name(device)})")
    print(f"torch {torch.__version__}, celltx {getattr(celltx, '__version__', '?')}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"precision: {precision(device)}")
    print(flush=True)

    rows, infos = [], []
    for name in args.configs:
        r, info = run_config(name, args, device)
        rows += r
        infos.append(info)

    print()
    print("| config | phase | batch | cells/s | tokens/s | peak mem (MiB) | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = "n/a" if r.mfu != r.mfu else f"{r.mfu:.1%}"
        print(
            f"| {r.config} | {r.phase} | {r.batch} | {fmt(r.cells_per_s)} | "
            f"{fmt(r.tokens_per_s)} | {fmt(r.peak_mib)} | {mfu} |"
        )
    print()
    print("Notes:")
    for info in infos:
        print(f"- {info}")
    print("- tokens/s: non-padding tokens (<cls> included) per second.")
    print(f"- peak mem: {PeakMemory.method(device)}.")
    print(
        "- train step: forward + backward + AdamW; peak mem includes warm-up steps (optimizer state)."
    )
    print(
        "- embed: timed end to end, incl. scvi-tools data loading; tokens from the cells' gene counts."
    )
    print(
        "- MFU: tokens/s × model FLOPs per token (2N + 4·layers·L·d forward, ×3 for a train "
        f"step) / peak ({fmt(peak_tflops(device, args.peak_tflops))} TFLOP/s)."
    )
    print("- numbers are machine- and load-specific; compare only runs on the same machine.")


if __name__ == "__main__":
    main()
