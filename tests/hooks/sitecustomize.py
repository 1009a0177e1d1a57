"""Test hooks that every Python process of a test run takes (pytest, the CLI and its workers), through
PYTHONPATH=tests/hooks:

- `STYLIZE_TEST_CPU=KIND` (`make test-cpu KIND=...`): torch is told it runs on that kind of CPU, so that
  `precision: auto` and every tolerance are tried as CI's other machines take them. KIND: avx2 (no bf16
  units), avx512_bf16 (AVX-512 BF16, no AMX) or amx.
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
kind = os.environ.get("STYLIZE_TEST_CPU")
if kind:
    if kind not in KINDS:
        raise SystemExit(f"STYLIZE_TEST_CPU={kind}: use one of {', '.join(KINDS)}")
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
