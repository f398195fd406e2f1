"""Which scaled-dot-product-attention kernel survives FLUX.1's training shapes on this GPU.

FLUX.1 LoRA training @1024 raised "CUDA error: an illegal memory access" in backward on an
H100 with torch 2.11 (bf16, with and without checkpointing, with and without an nf4 base) and
ran with ``CUDA_LAUNCH_BLOCKING=1``. Persona's own code in that step frees or reuses no memory
a queued kernel still reads (docs/benchmarks.md lists what was reviewed), which leaves the
kernels the step calls. The attention of FLUX's double and single blocks (24 heads x (4096
image + 512 text) tokens x 128, bf16, no mask) is the largest of them, and PyTorch picks its
backend per GPU and version (cuDNN attention became a default on Hopper). This script runs
that attention forward and backward in a fresh process per backend (an illegal access
poisons the CUDA context), asynchronously, several times, and prints a table.

    python bench/flux_attention_backends.py            # on a GPU
    python bench/flux_attention_backends.py --tokens 4608 --repeats 20
"""
from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
backend, tokens, heads, dim, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
q, k, v = (torch.randn(1, heads, tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
ctx = sdpa_kernel(getattr(SDPBackend, backend)) if backend != "DEFAULT" else torch.enable_grad()
with ctx:
    for _ in range(repeats):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out.float().square().mean().backward()
torch.cuda.synchronize()
ok = all(torch.isfinite(t.grad).all().item() for t in (q, k, v))
print("ok" if ok else "non-finite gradients")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096 + 512)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    print(f"| backend | {args.heads} heads x {args.tokens} tokens x {args.dim}, bf16, fwd+bwd x {args.repeats} |")
    print("| --- | --- |")
    for backend in ("DEFAULT", "CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        run = subprocess.run([sys.executable, "-c", CHILD, backend, str(args.tokens), str(args.heads), str(args.dim),
                              str(args.repeats)], capture_output=True, text=True, timeout=600)
        text = run.stdout.strip() or (run.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"| {backend} | {text[:160]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
