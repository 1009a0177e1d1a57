"""Test hooks that every Python process of a test run takes (pytest, the CLI and its workers), through
PYTHONPATH=tests/hooks:

- `STYLIZE_TEST_CPU=KIND` (`make test-cpu KIND=...`): torch is told it runs on that kind of CPU, so that
  `precision: auto` and every tolerance are tried as CI's other machines take them. KIND: avx2 (no bf16
  units), avx512_bf16 (AVX-512 BF16, no AMX: an AMD EPYC) or amx. On a CPU that has more, the kernels are
  held to that kind too (oneDNN's, ATen's and MKL's instruction sets; MKL runs AVX2 code on AMD CPUs), so
  that the sums are made in the order and precision that kind's kernels make them.
- `STYLIZE_TEST_RECYCLE=1`: loky replaces each worker process after every task but its first, as it does
  with a worker whose memory grew by more than 300 MB (tests/test_batch.py).
- `STYLIZE_TEST_FAULT=NAME[,NAME…]`: rendering content NAME raises the error a GPU gives after an illegal memory
  access (tests/test_gpu_paths.py)."""

import os

KINDS = {
    "avx2": {"avx512_f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False},
    "avx512_bf16": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False},
    "amx": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": True, "amx_tile": True},
}
KERNELS = {  # each kind's kernels: (oneDNN's ISA cap, ATen's vector ISA, MKL's instructions)
    "avx2": ("AVX2", "avx2", "AVX2"),
    "avx512_bf16": ("AVX512_CORE_BF16", "avx512", "AVX2"),
    "amx": ("DEFAULT", "avx512", "AVX512"),
}
kind = os.environ.get("STYLIZE_TEST_CPU")
if kind:
    if kind not in KINDS:
        raise SystemExit(f"STYLIZE_TEST_CPU={kind}: use one of {', '.join(KINDS)}")
    isa, aten, mkl = KERNELS[kind]  # before torch is imported, which reads them once
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", isa)
    os.environ.setdefault("ATEN_CPU_CAPABILITY", aten)
    os.environ.setdefault("MKL_ENABLE_INSTRUCTIONS", mkl)
    import torch

    real = torch.cpu.get_capabilities
    torch.cpu.get_capabilities = lambda: {**real(), **KINDS[kind]}
if os.environ.get("STYLIZE_TEST_RECYCLE") == "1":
    from joblib.externals.loky import process_executor

    process_executor._MEMORY_LEAK_CHECK_DELAY = 0.0  # check after every task
    process_executor._MAX_MEMORY_LEAK_SIZE = -1  # and call any size a leak
if fault := os.environ.get("STYLIZE_TEST_FAULT"):
    from pipeline.render.renderer import Renderer

    real_render = Renderer.render

    def render(self, content_path, *args, **kwargs):
        if content_path.name in fault.split(","):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_render(self, content_path, *args, **kwargs)

    Renderer.render = render
