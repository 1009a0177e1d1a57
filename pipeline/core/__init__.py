"""The functional core: tensors in, tensors out; no files, configs, processes or printing.

- `vgg`: the VGG-19/16 feature extractor (`VGGFeatures`, `Weights`, layer names, preprocessing);
  `winograd` and `packed`: its fast CPU convs (Winograd's transforms; oneDNN's weights packed once).
- `losses`: Gram and Wasserstein style terms, content and total variation.
- `descent`: L-BFGS (`lbfgs`, its pairs stacked in a `History`) and Adam.
- `scaling`: `LossScale`, the dynamic loss scale of fp16 layers' backward passes.
- `tiles`: losses and gradients of a large image evaluated in tiles.
- `temporal`: warping, masks and the temporal loss between video frames.
- `optimize`: one image (or a batch) coarse to fine (`Settings`, `stylize`, `style_targets`); progress leaves
  through one callback (`Progress`).
"""
