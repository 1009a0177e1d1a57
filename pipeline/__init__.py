"""stylize: batch neural style transfer (Gatys et al.) on VGG-19."""

__version__ = "0.1.0"
