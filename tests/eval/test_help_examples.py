"""Every command's ``--help`` example overrides parse into its config, and its "Keys:" list names real keys."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mixedae.cli import build_parser, main
from mixedae.commands.visualize import VisualizeConfig
from mixedae.config import PretrainConfig, load_config
from mixedae.eval.finetune import FinetuneConfig
from mixedae.eval.knn import KnnConfig
from mixedae.eval.linprobe import LinprobeConfig
from mixedae.eval.segfinetune import SegFinetuneConfig
from mixedae.eval.segprobe import SegprobeConfig
from mixedae.study.plan import load_plan
from mixedae.eval.transfer import PROTOCOLS as TRANSFER_PROTOCOLS, protocol_overrides

CONFIGS = {"pretrain": PretrainConfig, "knn": KnnConfig, "linprobe": LinprobeConfig, "finetune": FinetuneConfig,
           "segprobe": SegprobeConfig, "segfinetune": SegFinetuneConfig, "visualize": VisualizeConfig,
           "transfer": None, "study": None}  # transfer: per protocol; study: a plan, not a config  # transfer: per protocol
TRANSFER_CONFIGS = {"knn": KnnConfig, "linprobe": LinprobeConfig}


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: undo it


def example_overrides(text: str) -> list[str]:
    """The ``key=value`` words right after "e.g." in the overrides' help."""
    words = text.split("config overrides, e.g. ", 1)[1].split()
    example = []
    for word in words:
        if "=" not in word:
            break
        example.append(word)
    return example


def commands_with_overrides() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name for name, p in sub.choices.items() if any(a.dest == "overrides" for a in p._actions)}


def test_every_command_with_overrides_is_covered():
    assert commands_with_overrides() == set(CONFIGS)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_example_parses_into_the_commands_config(command, capsys):
    text = help_text(command, capsys)
    example = example_overrides(text)
    assert example, text
    extra = {"data": {"spec": "synthetic"}}
    if command == "transfer":
        assert {o.split(".", 1)[0] for o in example} & set(TRANSFER_PROTOCOLS)  # shows a per-protocol override
        for protocol, cls in TRANSFER_CONFIGS.items():
            load_config(cls, None, protocol_overrides(example, protocol), extra)
        return
    if command == "study":  # overrides change the plan itself
        plan = load_plan("configs/study/smoke.yaml", overrides=example)
        key, value = example[0].split("=", 1)
        assert value in repr(plan), f"{example[0]} does not show in the loaded plan"
        return
    cfg = load_config(CONFIGS[command], None, example, extra)
    key, value = example[0].split("=", 1)
    target = cfg
    for part in key.split("."):
        target = getattr(target, part)
    assert str(target) == value or (isinstance(target, float) and target == float(value))  # it sets what it says


@pytest.mark.parametrize("command", ["knn", "linprobe", "finetune", "segprobe"])
def test_keys_named_in_the_description_exist(command, capsys):
    text = help_text(command, capsys)
    match = re.search(r"Keys: (.*?)\.\.\.", text)
    assert match, f"{command} --help lists no keys"
    fields = {f.name for f in dataclasses.fields(CONFIGS[command])}
    for item in match.group(1).rstrip(", ").split(", "):
        for key in item.split("|"):
            assert key.split(".")[0] in fields, f"{command} --help names {key!r}, which its config does not have"
