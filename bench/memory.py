"""Weight bytes and peak memory of each memory mode, beside the fit check's estimates.

Usage:
    python bench/memory.py [--layers 8] [--tokens 2400] [--out bench/results/memory.json]
                           [--doc docs/performance.md]

On CPU: a scaled-down Wan transformer of the real class (``WanTransformer3DModel`` with the
Wan2.1-1.3B block shape: width 1536, 12 heads, feed-forward 8960, text width 4096; ``--layers``
blocks; random weights) is saved in the diffusers layout, then each mode that runs on CPU
(none = bf16, fp8_storage, int8 = torchao int8 weight-only) loads it through the same code the
service uses, in a fresh process each, and runs one forward pass over ``--tokens`` tokens. Per mode:

- ``weight_bytes``: bytes held by the loaded module's parameters and buffers (the inner tensors of
  quantized ones included); ``estimate_weight_bytes``: the fit check's price of the same tensors.
- ``load_rss_bytes``: resident memory the load added; ``forward_peak_bytes``: the peak resident
  memory during the forward pass above the level before it (sampled every 2 ms);
  ``estimate_activation_bytes``: the fit check's transformer activations for those tokens.

With a CUDA GPU (``--device cuda``), the same runs use ``torch.cuda.max_memory_allocated`` and add
the CUDA-only modes (fp8, bitsandbytes int8 and nf4).

Writes JSON and, with ``--doc``, replaces the table between the markers in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = dict(
    num_attention_heads=12,
    attention_head_dim=128,
    ffn_dim=8960,
    text_dim=4096,
    freq_dim=256,
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
#: glibc returns allocations above 64 KiB to the system when they are freed (mmap), so resident
#: memory follows live tensors instead of keeping freed blocks: RSS becomes a fair peak measure.
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
START, END = "<!-- bench/memory.py: start -->", "<!-- bench/memory.py: end -->"


def build(folder: Path, layers: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    WanTransformer3DModel(num_layers=layers, **BLOCK).to(torch.bfloat16).save_pretrained(folder)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure(folder: Path, mode: str, tokens: int, device_kind: str) -> dict:
    """One mode, in this process: load, then one forward pass. Returns the numbers."""
    import torch
    from diffusers import WanTransformer3DModel

    from model_store.fit_check import FFN_TENSORS, HIDDEN_TENSORS, price, read_tensors
    from model_store.memory_config import MemoryConfig
    from model_store.memory_modes import apply_fp8_storage, component_quantization_config, probe_device, tensor_bytes

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(device_kind)
    info = probe_device(device)
    dtype = torch.bfloat16
    before = rss()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    quant = component_quantization_config(mode, info, dtype, "diffusers")
    model = WanTransformer3DModel.from_pretrained(
        folder, torch_dtype=dtype, **({"quantization_config": quant} if quant else {})
    )
    if mode == "fp8_storage":

        class Holder:  # apply_fp8_storage works on a pipeline's components
            transformer = model

        apply_fp8_storage(Holder, MemoryConfig(quantization="fp8_storage", text_encoder_quantization="none"), dtype)
    if device.type == "cuda" and quant is None:
        model.to(device)
    if device.type == "cpu" and mode == "none":
        # from_pretrained maps the safetensors file: its pages become resident only when read.
        # Read one byte per page now, so the forward pass's peak counts activations, not weights.
        with torch.inference_mode():
            for p in model.parameters():
                if p.is_contiguous():
                    p.view(-1).view(torch.uint8)[::4096].sum()
    loaded = rss()
    frames = 3
    h = w = int((tokens / frames) ** 0.5) * 2
    latents = torch.randn(1, 16, frames, h, w, dtype=dtype, device=device)
    text = torch.randn(1, 512, BLOCK["text_dim"], dtype=dtype, device=device)
    t = torch.tensor([500], device=device)
    n_tokens = frames * (h // 2) * (w // 2)
    load_peak = peak[0]
    peak[0] = loaded
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)
    forward_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    hidden = BLOCK["num_attention_heads"] * BLOCK["attention_head_dim"]
    estimate_act = n_tokens * (HIDDEN_TENSORS * hidden + FFN_TENSORS * BLOCK["ffn_dim"]) * 2
    estimate_weights = price(read_tensors(folder), mode, 2).total
    out = {
        "mode": mode,
        "weight_bytes": tensor_bytes(model),
        "estimate_weight_bytes": estimate_weights,
        "tokens": n_tokens,
        "peak_rss_bytes": max(load_peak, peak[0]) - before,
        "estimate_peak_bytes": estimate_weights + estimate_act,
        "forward_peak_bytes": peak[0] - loaded,
        "estimate_activation_bytes": estimate_act,
        "forward_s": round(forward_s, 2),
    }
    if device.type == "cuda":
        out["forward_peak_bytes"] = torch.cuda.max_memory_allocated() - base_alloc
    return out


def table(report: dict) -> str:
    results = report["results"]
    bf16 = next(r["weight_bytes"] for r in results if r["mode"] == "none")
    mib = 2**20
    lines = [
        f"Measured on {report['machine']}: a {report['layers']}-layer WanTransformer3DModel (width 1536, "
        f"feed-forward 8960), {results[0]['tokens']} tokens, one forward pass.",
        "",
        "| mode | weights MiB | x bf16 | estimated MiB | forward peak MiB | estimated activations MiB "
        "| peak RSS MiB | estimated peak MiB | forward s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['weight_bytes'] / mib:.0f} | {r['weight_bytes'] / bf16:.2f} | "
            f"{r['estimate_weight_bytes'] / mib:.0f} | {r['forward_peak_bytes'] / mib:.0f} | "
            f"{r['estimate_activation_bytes'] / mib:.0f} | {r['peak_rss_bytes'] / mib:.0f} | "
            f"{r['estimate_peak_bytes'] / mib:.0f} | {r['forward_s']} |"
        )
    s = report["slope"]
    lines += [
        "",
        f"Activations per token (mode none, forward peaks at {s['tokens'][0]} and {s['tokens'][1]} tokens, "
        f"the difference over the difference in tokens): measured {s['measured_bytes_per_token'] / 1024:.1f} KiB, "
        f"estimated {s['estimate_bytes_per_token'] / 1024:.1f} KiB.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2400)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    ap.add_argument("--doc", type=Path, default=None)
    ap.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # internal: folder mode
    args = ap.parse_args()
    if args._one:
        print(json.dumps(measure(Path(args._one[0]), args._one[1], args.tokens, args.device)))
        return
    modes = ["none", "fp8_storage", "int8"] + (["fp8", "nf4"] if args.device == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        build(folder, args.layers)
        results = []
        for mode in modes:  # a fresh process per mode, so one mode's memory never counts for another
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_one",
                    str(folder),
                    mode,
                    "--tokens",
                    str(args.tokens),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
                env=ENV,
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
        # The activation slope: two token counts, so fixed costs (weights paged in, buffers) cancel.
        ends = []
        for tokens in (args.tokens // 2, args.tokens * 2):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_one",
                    str(folder),
                    "none",
                    "--tokens",
                    str(tokens),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
                env=ENV,
            )
            ends.append(json.loads(done.stdout.strip().splitlines()[-1]))
        dt = ends[1]["tokens"] - ends[0]["tokens"]
        slope = {
            "tokens": [e["tokens"] for e in ends],
            "measured_bytes_per_token": (ends[1]["forward_peak_bytes"] - ends[0]["forward_peak_bytes"]) / dt,
            "estimate_bytes_per_token": (ends[1]["estimate_activation_bytes"] - ends[0]["estimate_activation_bytes"])
            / dt,
        }
    import torch

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        if args.device == "cpu"
        else torch.cuda.get_device_name(0)
    )
    report = {
        "machine": machine,
        "layers": args.layers,
        "block": BLOCK,
        "device": args.device,
        "results": results,
        "slope": slope,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    if args.doc is not None:
        text = args.doc.read_text()
        a, b = text.index(START) + len(START), text.index(END)
        args.doc.write_text(text[:a] + "\n" + table(report) + "\n" + text[b:])


if __name__ == "__main__":
    main()
