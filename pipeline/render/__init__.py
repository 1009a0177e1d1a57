"""One job end to end on one device: read, style targets (cached), optimise, write.

- `renderer`: `Renderer` (precision, tiles, out-of-memory retry) and its `Rendered` result.
- `memory`: what a level costs, to decide whether it fits or is tiled.
- `style_cache`: `StyleCache`, style targets in memory and on disk, keyed.
- `styles`: `StyleSource`, a worker's style images (read and hashed once) and their targets through the cache.
- `warp_error`: a finished clip's temporal consistency, measured.
"""
