"""Process start-up for the `stylize` command: allocator settings first (see pipeline.run.allocator), then the CLI."""

from __future__ import annotations

from pipeline.run.allocator import grow_cuda_segments, keep_freed_memory


def main() -> None:
    grow_cuda_segments()
    keep_freed_memory("pipeline")
    from pipeline.ui.cli import main as cli_main

    cli_main()
