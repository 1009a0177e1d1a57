"""`make test-cpu KIND=...`: every Python process of the test run (pytest, the CLI and its workers) tells
torch it runs on that kind of CPU, so that `precision: auto` and every tolerance are tried as CI's other
machines take them. KIND: avx2 (no bf16 units), avx512_bf16 (AVX-512 BF16, no AMX) or amx."""

import os

KINDS = {
    "avx2": {"avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False},
    "avx512_bf16": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False},
    "amx": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True},
}
kind = os.environ.get("STYLIZE_TEST_CPU")
if kind:
    if kind not in KINDS:
        raise SystemExit(f"STYLIZE_TEST_CPU={kind}: use one of {', '.join(KINDS)}")
    import torch

    real = torch.cpu.get_capabilities
    torch.cpu.get_capabilities = lambda: {**real(), **KINDS[kind]}
