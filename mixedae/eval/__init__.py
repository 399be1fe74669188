"""Evaluation of pre-trained encoders: k-NN, linear probe, fine-tuning, segmentation probe and fine-tuning,
and the transfer table. Each protocol is a ``run_<protocol>(weights, data, ...)`` function that writes
``results.json`` and returns it; ``mixedae <protocol>`` only parses arguments. Reading ``--weights``
(:func:`load_encoder`) and exports to other libraries are in :mod:`mixedae.export`."""

from ..export.weights import load_encoder
from .finetune import run_finetune
from .knn import run_knn
from .linprobe import run_linprobe
from .segfinetune import run_segfinetune
from .segprobe import run_segprobe
from .transfer import run_transfer

__all__ = ["load_encoder", "run_finetune", "run_knn", "run_linprobe", "run_segfinetune", "run_segprobe", "run_transfer"]
