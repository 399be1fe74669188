"""The paper's own numbers (MixedAE, CVPR 2023), shown beside a study's table for orientation only.

They come from ImageNet-1K pre-training of ViT-B/16 and transfer to ImageNet-1K fine-tuning, ADE20K
(UperNet) and COCO (Mask R-CNN): a different data set, model size and budget from any study run
here, so no number of a study is comparable with them.
"""

from __future__ import annotations

REFERENCE_TITLE = "Reference: the paper's numbers (ImageNet-1K pre-training, ViT-B/16; not comparable with the table above)"
REFERENCE_COLUMNS = ("model", "pre-training epochs", "IN-1K fine-tune top-1 %", "ADE20K mIoU", "COCO AP^bb",
                     "COCO AP^mk", "pre-training GPU-days")
REFERENCE_ROWS = (
    ("MAE", 300, 82.7, 46.1, 47.2, 41.1, 16.4),
    ("MixedAE", 300, 83.1, 47.0, 47.8, 41.6, 16.9),
    ("MixedAE-Full", 300, 83.8, 48.9, 51.0, 44.1, 62.3),
    ("MAE", 1600, 83.6, 48.1, 50.6, 43.8, 87.4),
    ("MixedAE", 1600, 83.9, 49.8, 51.5, 44.5, 90.1),
    ("iBOT", 1600, 83.8, 49.6, 51.2, 44.3, 172.1),
)
REFERENCE_NOTES = (
    "Ablation (same setting): HomoCon alone, without reconstruction, reaches 7.8 % IN-1K top-1 / 8.3 ADE20K mIoU, "
    "against 82.7 % / 46.4 mIoU together with reconstruction.",
    "Transfer: average top-1 over 11 downstream classification sets, MAE 85.3 → MixedAE 86.9.",
)


def reference() -> dict:
    """The block as data (for results.json)."""
    return {"title": REFERENCE_TITLE, "columns": list(REFERENCE_COLUMNS), "rows": [list(r) for r in REFERENCE_ROWS],
            "notes": list(REFERENCE_NOTES)}


def reference_markdown() -> str:
    lines = [f"## {REFERENCE_TITLE}", "", "| " + " | ".join(REFERENCE_COLUMNS) + " |",
             "|" + "---|" * len(REFERENCE_COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in REFERENCE_ROWS]
    lines += [""] + [f"- {note}" for note in REFERENCE_NOTES]
    return "\n".join(lines)
