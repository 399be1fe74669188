"""Two torchrun "nodes" on this machine, for the multi-node tests.

Each node is one ``torchrun --nnodes=2 --nproc_per_node=1`` launcher with c10d rendezvous on
127.0.0.1, its own working folder (so a relative ``--output-dir`` is a different folder per node, as
on nodes without a shared filesystem) and its own environment (``MIXEDAE_CACHE``). Node ``i`` gets
``--local_addr=127.0.0.<i+1>``: c10d orders ranks by node address, so node 0 is rank 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (``--master_port=0`` hangs on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(port: int, run_id: str) -> list[str]:
    """The launcher every node runs (on real nodes: ``--rdzv_endpoint=<first node's host>:<port>``)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={run_id}"]


class Nodes:
    """Start the two nodes; ``wait`` for both; ``kill`` both with every process they started."""

    def __init__(self, cwds: Sequence[Path], args: Sequence[str], envs: Sequence[dict], run_id: str) -> None:
        port = free_port()
        self.logs = [Path(cwd) / f"node{i}-{run_id}.err" for i, cwd in enumerate(cwds)]
        self.procs = []
        for i, (cwd, env) in enumerate(zip(cwds, envs)):
            Path(cwd).mkdir(parents=True, exist_ok=True)
            cmd = [*torchrun_command(port, run_id), f"--local_addr=127.0.0.{i + 1}", "-m", "mixedae", *args]
            with self.logs[i].open("w") as err:
                self.procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                                   start_new_session=True))

    def stderr(self, i: int) -> str:
        return self.logs[i].read_text()

    def wait(self, timeout: float = 300, until: Optional[Callable[[], bool]] = None) -> list[Optional[int]]:
        """Return codes once both exit, or (with ``until``) as soon as ``until()`` holds (then both are killed,
        codes None); a timeout kills both and fails."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if until is not None and until():
                self.kill()
                return [None, None]
            if all(p.poll() is not None for p in self.procs):
                return [p.returncode for p in self.procs]
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the nodes did not finish in {timeout} s (a hang?):\n" +
                             "\n".join(self.stderr(i)[-1500:] for i in range(len(self.procs))))

    def kill(self) -> None:
        """SIGKILL each launcher and every process under it (torchrun starts workers in their own sessions)."""
        for p in self.procs:
            if p.poll() is None:
                for pid in [p.pid, *descendants(p.pid)]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            p.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
