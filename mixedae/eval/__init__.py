"""Evaluation of pre-trained encoders: weights loading and export, k-NN, linear probe, fine-tuning,
segmentation probe and the transfer table. Each protocol is a ``run_<protocol>(weights, data, ...)``
function that writes ``results.json`` and returns it; ``mixedae <protocol>`` only parses arguments."""

from .finetune import run_finetune
from .knn import run_knn
from .linprobe import run_linprobe
from .segprobe import run_segprobe
from .transfer import run_transfer
from .weights import export_encoder, load_encoder

__all__ = ["export_encoder", "load_encoder", "run_finetune", "run_knn", "run_linprobe", "run_segprobe", "run_transfer"]
