"""The batch logic: what to do, not how. Nothing here touches tensors.

- `config`: the YAML config, validated (`Config`, `load_config`, `ConfigError`, `reference`).
- `discover`: inputs into `Source`s (images, videos, sequences, animations).
- `plan`: one keyed `Job` per output, segments, seams, clips and videos (`plan`, `Plan`).
- `manifest`: the record of each output (`Manifest`, `Record`, `reason`).
- `lock`: one run per output dir (`run_lock`, `LockHeld`).
"""
