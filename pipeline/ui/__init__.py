"""The face: the `stylize` command, its progress display and the run report.

- `cli`: the typer app (`run`, `image`, `plan`, `report`); `launch`: the entry point.
- `progress`: `RunDisplay`, the run's lines and live display; `progress_callback` for one image.
- `report`: report.html and the contact sheet.
"""
