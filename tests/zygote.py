"""``python train.py ...`` as a real process, forked from one that has already imported the frameworks.

Every ``train.py`` process spends about 6 s of CPU importing torch, Lightning (which pulls in torchmetrics,
scipy and torch._dynamo), transformers and datasets before it reads its first override; the suite starts dozens.
A zygote, started once per test process with the same environment the launches get, imports them once
and forks a child per launch. The child is a process of its own (pid, exit status, signals, stdout and
stderr), with the launch's environment, working directory, ``sys.argv`` and thread count, and runs
``train.py`` as ``__main__`` exactly as the interpreter would; only the import work is shared. Processes the
child starts itself (Lightning's DDP ranks, ``resume=`` re-executing itself) are fresh interpreters as before.

The zygote is single-threaded (it polls its children between requests), so forking it is safe.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a train.py run imports before it reads its config (everything else loads in the child, as usual), and
# transformers.optimization, which every run's schedule imports: it pulls in peft, accelerate and bitsandbytes
# (~1,000 modules, 1.8 s of a tiny run's 3.5 s on an idle core)
PRELOAD = ["torch", "lightning", "transformers", "datasets", "hydra", "omegaconf", "safetensors.torch",
           "tasks", "tasks.cli", "tasks.experiment", "tasks.classification", "callbacks", "sparse_adapter",
           "transformers.optimization"]
BASE_ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def serve() -> None:
    """The zygote's loop: a JSON request per line on stdin → fork; replies (pid, then exit status) on stdout."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    default_threads = torch.get_num_threads()
    os.write(1, b'{"ready": true}\n')
    pending, children = b"", set()
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return  # the test process is gone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(line), default_threads)
                children.add(pid)
                os.write(1, json.dumps({"started": pid}).encode() + b"\n")
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                os.write(1, json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _child(request: dict, default_threads: int) -> None:
    """Become ``python <script> <argv>`` in ``cwd`` with ``env``; never returns."""
    import atexit as child_atexit
    import runpy
    import signal
    import traceback

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (block-buffered, as for a file)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 (line-buffered, as Python's own)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or default_threads))
        script = str(Path(request["cwd"], request["script"]).resolve())
        sys.argv = [request["script"], *request["argv"]]
        sys.orig_argv = [sys.executable, request["script"], *request["argv"]]
        sys.path[0] = str(Path(script).parent)
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
            traceback.print_exc()
            code = 1
        child_atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 (a closed stream: nothing left to flush)
                pass
        os._exit(code)


class Zygote:
    """The client side: one zygote per test process, started on first use."""

    def __init__(self):
        env = dict(os.environ, **BASE_ENV)
        self.process = subprocess.Popen([sys.executable, "-c", "from tests.zygote import serve; serve()"], cwd=ROOT,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buffer, self.exits = b"", {}
        if self._message(timeout=300).get("ready") is not True:
            raise RuntimeError("the zygote did not start")
        atexit.register(self.close)

    def _message(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the zygote died")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, script: str, argv: list[str], env: dict, cwd: Path, stdout: str, stderr: str) -> int:
        request = {"script": script, "argv": list(argv), "env": dict(env), "cwd": str(cwd), "stdout": stdout, "stderr": stderr}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        while True:
            message = self._message(timeout=60)
            if "started" in message:
                return message["started"]
            self.exits[message["pid"]] = message["returncode"]

    def wait(self, pid: int, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.exits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = self._message(left)
            self.exits[message["pid"]] = message["returncode"]
        return self.exits[pid]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


_zygote: Zygote | None = None


class ForkedProcess:
    """What ``subprocess.Popen([sys.executable, script, *argv], cwd=..., env=..., stdout=PIPE, stderr=PIPE, text=True)``
    gives the tests: ``pid``, ``poll``, ``wait``, ``send_signal``, ``communicate``, ``returncode``."""

    def __init__(self, script: str, argv: list[str], env: dict, cwd: Path = ROOT):
        global _zygote
        if _zygote is None or _zygote.process.poll() is not None:
            _zygote = Zygote()
        self.zygote = _zygote
        self.folder = tempfile.mkdtemp(prefix="forked-")
        self.paths = [os.path.join(self.folder, name) for name in ("stdout", "stderr")]
        for path in self.paths:
            Path(path).touch()
        self.args = [sys.executable, script, *argv]
        self.pid = self.zygote.start(script, argv, env, cwd, *self.paths)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self.zygote.wait(self.pid, timeout=0)
            except TimeoutError:
                return None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.zygote.wait(self.pid, timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        texts = [Path(path).read_text(errors="replace") for path in self.paths]
        for path in self.paths:
            os.unlink(path)
        os.rmdir(self.folder)
        return texts[0], texts[1]


def run(script: str, argv: list[str], env: dict, timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=...)``, forked."""
    process = ForkedProcess(script, argv, env, cwd)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
