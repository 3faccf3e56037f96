"""omnisift-edge: ship the OmniSIFT token compressor with Qwen2.5-Omni to NVIDIA GPUs.

Importing the package is cheap on purpose: torch, transformers, onnxruntime and tensorrt are
imported inside the functions that need them, so `import omnisift_edge` and every `--help` work
with the base install (click + numpy) on a Jetson or a laptop.
"""

__version__ = "0.1.0"

from omnisift_edge.errors import UsageError

__all__ = ["UsageError", "__version__"]
