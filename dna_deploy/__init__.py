"""dna-deploy: hardware-aware DNA neural architecture search, from latency tables to verified export.

Importing the package stays light: torch, onnxruntime, TensorFlow and TensorRT load lazily where used.
"""

__version__ = "0.1.0"
