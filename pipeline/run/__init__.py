"""The executors: a plan's jobs on devices, locally or on Dask, and the steps after the frames.

- `execute`: `execute(config, plan, report)`, one batch run.
- `tasks`: what a worker runs wherever it runs (`Task`, `task_records`, `WorkerState`).
- `local`: the local pool (joblib's loky), one worker per device slot.
- `cluster`: the Dask executor (`executor: dask`).
- `devices`: `resolve_devices`, `device_slots`, `worker_threads`.
- `segment`: a temporal chain of video frames, run in order.
- `finish`: cross-fades, warp error and reassembly (`Outcome`).
- `ticks`: live progress from workers (`Tick`, `Ticker`); `allocator`: allocator settings for the processes.
"""
