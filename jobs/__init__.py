"""What runs inside the training worker process (``python -m jobs.worker``): model loading, data,
the training loop, checkpoints, final artifacts, and the GGUF importer (``python -m jobs.gguf_import``).

Only the worker process imports this package; the daemon never does (it must not import torch).
"""
