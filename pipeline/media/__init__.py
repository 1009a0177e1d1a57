"""Files and formats: nothing here knows the optimiser.

- `images`: reading (EXIF orientation, alpha, 16-bit and float), writing, atomic writes (`atomic_path`).
- `color`: ICC-tagged inputs into sRGB and outputs tagged sRGB or back in the input's profile (LittleCMS).
- `video`: probing, frame extraction (OpenCV) and reassembly with the source's streams (PyAV).
- `animation`: animated GIF and WebP in and out.
- `flow`: optical flow between frames, cached on disk.
- `weights`: the VGG weight sources (bundled, torchvision, a `.pth` file).
- `digest`: content hashes of files and values.
"""
