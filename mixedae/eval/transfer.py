"""Transfer table: k-NN and/or the linear probe of one or more weights on several datasets.

Shaped like the seeds' transfer table: one row per (weights, protocol), one column per dataset
(top-1 %: the k-NN headline, cls token at k = 20, and the linear probe's last-epoch top-1) plus
their average. Each cell is an ordinary protocol run written to
``<output_dir>/<weights>/<dataset>/<protocol>/results.json``; frozen features come from each weights'
own cache (``<run>/eval/features``, the one ``mixedae knn`` and ``linprobe`` use) and from memory, so
every dataset is encoded once per weights.

Overrides: ``knn.<key>=...`` / ``linprobe.<key>=...`` go to that protocol only (e.g.
``linprobe.epochs=30``); every other ``key=value`` (``data.*``, ``seed``, ...) goes to all runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text
from .common import FEATURES_DIR, RESULTS_FILE, dataset_name, eval_root, weights_name
from .knn import run_knn
from .linprobe import run_linprobe
from ..export.weights import load_encoder

PROTOCOLS: dict[str, Callable[..., dict[str, Any]]] = {"knn": run_knn, "linprobe": run_linprobe}
TABLE_FILE = "transfer.md"


def _as_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def protocol_overrides(overrides: Sequence[str], protocol: str) -> list[str]:
    """The shared overrides plus ``<protocol>.<key>=...`` ones with the prefix removed."""
    shared = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] not in PROTOCOLS]
    return shared + [o[len(protocol) + 1:] for o in overrides if o.startswith(protocol + ".")]


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``| weights | protocol | <dataset>... | Avg. |`` with one decimal."""
    head = ["weights", "protocol", *columns, "Avg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row['scores'][c]:.1f}" for c in columns] + [f"{row['average']:.1f}"]
        lines.append("| " + " | ".join([row["weights"], row["protocol"], *cells]) + " |")
    return "\n".join(lines)


def run_transfer(weights: str | Sequence[str], data: str | Sequence[str], *,
                 protocols: str | Sequence[str] = ("knn", "linprobe"), overrides: Sequence[str] = (),
                 output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Every protocol of every weights on every data spec; writes ``results.json`` and ``transfer.md``.

    ``weights``, ``data`` and ``protocols`` are lists or comma-separated strings. The default output
    is ``<run>/eval/transfer`` for a single weights, ``runs/eval/transfer`` for several.
    """
    weights_list, specs, protocol_list = _as_list(weights), _as_list(data), _as_list(protocols)
    if not weights_list or not specs:
        raise UserError("transfer needs at least one --weights and one --data spec")
    unknown = [p for p in protocol_list if p not in PROTOCOLS]
    if unknown or not protocol_list:
        raise UserError(f"unknown protocol(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PROTOCOLS)}")
    columns = [dataset_name(s) for s in specs]
    if len(set(columns)) != len(columns):
        raise UserError(f"two data specs share the name {columns}; rename one folder so the table columns differ")
    infos = [load_encoder(w)[1] for w in weights_list]
    if output_dir is not None:
        out = Path(output_dir)
    else:
        out = eval_root(infos[0]) / "transfer" if len(infos) == 1 else Path("runs") / "eval" / "transfer"
    rows, runs = [], []
    for w, info in zip(weights_list, infos):
        name = weights_name(info)
        for protocol in protocol_list:
            scores = {}
            for spec, column in zip(specs, columns):
                run_out = out / name / column / protocol
                # the weights' own feature cache, shared with `mixedae knn` / `linprobe` runs on them
                extra = [f"cache_dir={eval_root(info) / FEATURES_DIR}", *protocol_overrides(overrides, protocol)]
                result = PROTOCOLS[protocol](w, spec, overrides=extra, output_dir=run_out)
                scores[column] = result["top1"]
                runs.append({"weights": name, "protocol": protocol, "dataset": column,
                             "results_file": str(run_out / RESULTS_FILE)})
            rows.append({"weights": name, "path": str(w), "protocol": protocol, "scores": scores,
                         "average": sum(scores.values()) / len(scores)})
    table = markdown_table(rows, columns)
    results = {"protocol": "transfer", "metric": "top1", "protocols": protocol_list, "datasets": columns,
               "specs": specs, "rows": rows, "runs": runs, "table": table, "results_file": str(out / RESULTS_FILE)}
    atomic_write_text(table + "\n", out / TABLE_FILE)
    atomic_write_json(results, out / RESULTS_FILE)
    return results


def summary(results: dict[str, Any]) -> str:
    return (f"transfer top-1 % ({', '.join(results['protocols'])})\n{results['table']}\n"
            f"-> {results['results_file']}")
