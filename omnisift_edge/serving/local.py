"""Start and stop the `tritonserver` binary that the nvidia-pytriton wheel ships, on this machine.

For tests, the benchmark and a first try without a Triton container. The wheel's binary needs:
its bundled libraries (`nvidia_pytriton.libs`) on LD_LIBRARY_PATH; a backend folder holding the
Python backend and the stub built for this interpreter (`python_backend_stubs/3.X/`) — prepared
in a temporary folder of links, so site-packages is never written to; and the environment's
import path in PYTHONPATH (the generated model.py puts it on sys.path). PyTriton's own Python
layer is not used (it failed on Python 3.11.7, and its numpy<2 pin does not fit this project).
The server binds to 127.0.0.1 on free ports; `stop()` always ends it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from omnisift_edge.errors import UsageError

INSTALL_HINT = "pip install 'omnisift-edge[serve]' && pip install --no-deps nvidia-pytriton==0.7.0"


@dataclass(frozen=True)
class BundledServer:
    binary: Path            # .../pytriton/tritonserver/bin/tritonserver
    libs: Path              # .../nvidia_pytriton.libs
    python_backend: Path    # .../pytriton/tritonserver/backends/python
    stub: Path              # .../python_backend_stubs/3.X/triton_python_backend_stub


def find_bundled_server() -> BundledServer:
    """Locate nvidia-pytriton's tritonserver without importing pytriton (its imports need more)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"nvidia-pytriton is not installed (it ships the tritonserver binary); {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = BundledServer(binary=root / "bin" / "tritonserver", libs=root.parent.parent / "nvidia_pytriton.libs",
                          python_backend=root / "backends" / "python",
                          stub=root / "python_backend_stubs" / version / "triton_python_backend_stub")
    for path in (found.binary, found.libs, found.python_backend / "libtriton_python.so", found.stub):
        if not path.exists():
            raise UsageError(f"nvidia-pytriton's server is incomplete here (no {path}; Python {version} stub?); "
                             f"reinstall it: {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_environment(extra_paths: tuple[str, ...] = ()) -> dict[str, str]:
    """PYTHONPATH: the importable omnisift_edge (this copy), extra paths, then this interpreter's site-packages."""
    import omnisift_edge

    package_parent = str(Path(omnisift_edge.__file__).resolve().parent.parent)
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths = list(dict.fromkeys([package_parent, *extra_paths, *site, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


@dataclass
class LocalServer:
    """A running tritonserver on 127.0.0.1; use as a context manager or call stop()."""

    repository: Path
    grpc_port: int
    http_port: int
    log_path: Path
    process: subprocess.Popen
    _scratch: Path = field(repr=False, default=None)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)     # its own group: the server and its stubs
                self.process.wait(timeout)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _libpython_dir() -> str:
    """The folder of this interpreter's libpython, so the stub embeds this Python (not the system's 3.X)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and soname and (Path(libdir) / soname).exists() else ""


def _backend_folder(server: BundledServer, scratch: Path) -> Path:
    """backends/python with the Python backend and this interpreter's stub, as links (nothing copied)."""
    python = scratch / "backends" / "python"
    python.mkdir(parents=True)
    for item in server.python_backend.iterdir():
        if item.name != "__pycache__":
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(server.stub)
    return python.parent


def start_local_server(repository: Path, *, ready_timeout: float = 120.0, log_path: Path | None = None) -> LocalServer:
    """Start tritonserver on `repository`; return once its model is ready (or raise with the log's tail)."""
    server = find_bundled_server()
    scratch = Path(tempfile.mkdtemp(prefix="omnisift-triton-"))
    log_path = Path(log_path) if log_path else scratch / "tritonserver.log"
    grpc_port, http_port = free_port(), free_port()
    env = server_environment()
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (_libpython_dir(), str(server.libs), env.get("LD_LIBRARY_PATH", ""))
                                             if p)
    cmd = [str(server.binary), f"--model-repository={Path(repository).resolve()}",
           f"--backend-directory={_backend_folder(server, scratch)}",
           "--http-address=127.0.0.1", f"--http-port={http_port}",
           "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
           "--allow-metrics=false", "--exit-timeout-secs=2",
           "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    running = LocalServer(Path(repository), grpc_port, http_port, log_path, process, scratch)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return running
        except OSError:
            pass
        time.sleep(0.25)
    tail = "\n".join(running.log().splitlines()[-15:])
    running.stop()
    raise RuntimeError(f"tritonserver did not become ready in {ready_timeout:g} s:\n{tail}")
