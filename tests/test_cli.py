"""The command line: every documented command exists; mistakes are one line on stderr and exit 2."""

import subprocess
import sys

import pytest

from mixedae.cli import build_parser, main

COMMANDS = ("pretrain", "knn", "linprobe", "finetune", "segprobe", "transfer", "export", "visualize", "report",
            "study")


def exit_code(argv):
    """``main(argv)``'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_every_command_of_the_contract_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["frobnicate"], "invalid choice"),
        (["pretrain", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["pretrain", "train.epochz=3"], "unknown config key train.epochz"),
        (["pretrain", "--config", "missing.yaml"], "does not exist"),
        (["pretrain", "--data", "/no/such/folder", "train.epochs=1"], "/no/such/folder"),
        (["knn", "--weights", "/no/such/run", "--data", "synthetic"], "/no/such/run"),
        (["export", "/no/such/run", "--out", "x"], "/no/such/run"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = exit_code(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "mixedae", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mixedae ")
