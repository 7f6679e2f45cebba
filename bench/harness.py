"""Shared plumbing for the benchmarks (not a benchmark itself).

- ``Service``: a child process (simulator, daphne, LiteLLM) with its log file, stopped by pid.
- ``start_simulator``, ``start_slipstream`` (a throwaway SQLite database, migrated, with a user,
  a backend and a slot sized for 2,000 streams, an API key and a logged-in session),
  ``start_litellm`` (its own virtualenv under ``bench/.venv-litellm``, created on first use).
- ``Sampler``: per-process CPU (whole process and its main thread), RSS and thread count from
  ``/proc``, and the machine's busy CPU from ``/proc/stat``, sampled every 0.25 s by a thread.
- ``percentiles`` (nearest rank) and ``write_result`` (``bench/results/<name>.json``).

Times are ``time.monotonic()`` seconds (CLOCK_MONOTONIC, the same clock in every process on
Linux, so the load generator's timestamps and these samples line up).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from chatsite import server  # noqa: E402  (its command line only: no Django)

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
# The newest LiteLLM whose dependencies resolve on this machine's package index (1.103.0 and
# later require certifi>=2026.10.19, which the index does not have).
LITELLM_VERSION = "1.102.4"
PYSPY_VERSION = "0.4.3"
PEER_VENV = BENCH / ".venv-litellm"
# Slot and backend limits for the capacity runs: far above the largest sweep level, so the
# dispatcher never queues and the httpx pool never waits.
CONCURRENCY = 2000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    """Thousands of sockets a side: lift the soft limit on open files to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------
@dataclass
class Service:
    """One child process serving HTTP at ``url``; its output goes to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def pinned_to(cores: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` that puts the child on ``cores`` (every thread
    it starts inherits them); None, for any core, when ``cores`` is empty or None."""
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def spawn(
    name: str,
    command: list[str],
    url: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    *,
    cores: set[int] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Service:
    """Start ``command`` as the service ``name`` at ``url``, its output in ``tmp/<name>.log``.
    ``cores``: the CPUs it may run on (every thread it starts inherits them), None for any;
    ``pass_fds``: descriptors it inherits (a listening socket for daphne's ``--fd``)."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pinned_to(cores),
            pass_fds=pass_fds,
        )
    return Service(name, process, url, log)


def shared_port_listeners(count: int, backlog: int = 4096) -> tuple[int, list[socket.socket]]:
    """``count`` listening sockets on one free port of 127.0.0.1, each with ``SO_REUSEPORT``:
    the kernel spreads new connections over them by a hash of the client's address and port,
    so ``count`` processes, each accepting on its own socket, serve one address. Returns the
    port and the sockets (inheritable; close them once the processes hold them)."""
    sockets: list[socket.socket] = []
    port = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        sock.listen(backlog)
        sock.set_inheritable(True)
        sockets.append(sock)
    return port, sockets


def wait_http(service: Service, path: str, timeout_s: float = 60) -> None:
    """Poll ``GET url+path`` until it answers (any status); fail if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        try:
            httpx.get(service.url + path, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not come up in {timeout_s:g} s:\n{service.log_tail()}")


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"slipstream-bench-{prefix}-"))


def start_simulator(
    tmp: Path,
    *,
    ttft_ms: float,
    tokens_per_s: float,
    length: int,
    port: int = 0,
    cores: set[int] | None = None,
) -> Service:
    """The built-in simulator in its own process, answering every request with ``length``
    content tokens, ``ttft_ms`` after the request, ``tokens_per_s`` apart; on ``cores`` (CPU
    numbers) when given."""
    port = port or free_port()
    command = [PYTHON, "-m", "chat.simulator", "--port", str(port)]
    command += ["--ttft-ms", str(ttft_ms), "--tokens-per-s", str(tokens_per_s)]
    command += ["--length", str(length)]
    service = spawn("simulator", command, f"http://127.0.0.1:{port}", tmp, cores=cores)
    wait_http(service, "/health")
    return service


# ------------------------------------------------------------------------------------------------
# Slipstream on a throwaway database
# ------------------------------------------------------------------------------------------------
SETUP = """
import json
from django.contrib.auth.models import User
from django.test import Client
from chat.models import Backend, Slot
from chat.services import api_key_create
user = User.objects.create_user("bench", password="bench-pass-123")
backend = Backend.objects.create(name="sim", base_url="{sim}/v1", max_concurrency={limit})
Slot.objects.create(
    name="primary", backend=backend, upstream_model="sim", is_default=True,
    single_flight="off", max_concurrency={limit},
)
{setup}
client = Client()
client.force_login(user)
key = api_key_create(user=user, name="bench")[1]
print(json.dumps({{"key": key, "session": client.cookies["sessionid"].value}}))
"""
# Any 32 characters from the CSRF alphabet form a valid unmasked token; the browser path sends
# it both as the csrftoken cookie and as the X-CSRFToken header, as static/chat/stream.js does.
CSRF_TOKEN = "benchCsrfToken0123456789abcdefAB"


@dataclass
class Slipstream:
    """A daphne process serving Slipstream on its own SQLite database in ``tmp``."""

    service: Service
    database: Path
    api_key: str
    session: str
    counts_file: Path | None = None
    # Every daphne process serving ``service.url`` (``service`` first): more than one with
    # ``start_slipstream(processes=N)``.
    processes: list[Service] = field(default_factory=list)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def session_headers(self) -> dict[str, str]:
        return {
            "Cookie": f"sessionid={self.session}; csrftoken={CSRF_TOKEN}",
            "X-CSRFToken": CSRF_TOKEN,
        }

    def counters(self) -> dict[str, Any]:
        """What ``bench/daphne_counted.py`` counted so far (``count_writes``): ``writes`` (by
        verb and table), ``gc_seconds`` and ``gc_collections`` per generation, ``at``."""
        if self.counts_file is None:
            return {}
        before = self.counts_file.stat().st_mtime_ns if self.counts_file.exists() else 0
        os.kill(self.service.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.counts_file.exists() and self.counts_file.stat().st_mtime_ns != before:
                with contextlib.suppress(ValueError):
                    counts: dict[str, Any] = json.loads(self.counts_file.read_text())
                    return counts
            time.sleep(0.02)
        raise RuntimeError("daphne did not write its statement counts")


def start_slipstream(
    tmp: Path,
    sim_url: str,
    *,
    count_writes: bool = False,
    setup: str = "",
    processes: int = 1,
    cores: list[int] | None = None,
) -> Slipstream:
    """Migrate a fresh SQLite database, create the bench user, slot and key, and start one
    daphne process (as ``manage.py serve`` does: ``chatsite.server.command``). With
    ``count_writes`` daphne runs under ``bench/daphne_counted.py``, which counts the database
    writes it makes and its GC pauses (read with ``Slipstream.counters``). ``setup``: more
    Python for the same ``manage.py shell``, run after the bench backend and slot are made
    (``backend``, ``Backend`` and ``Slot`` in scope) and before daphne starts.

    ``processes`` > 1 starts that many daphne processes behind one address: each accepts on its
    own ``SO_REUSEPORT`` socket of one port (``shared_port_listeners``, given to daphne as
    ``--fd``), sharing the database file; ``count_writes`` needs one process. ``cores``: the CPU
    each process runs on (process i on ``cores[i]``), None for any."""
    if processes > 1 and count_writes:
        raise ValueError("count_writes counts one process's writes")
    database = tmp / "db.sqlite3"
    counts_file = tmp / "db_writes.json" if count_writes else None
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_SECRET_KEY": "bench-not-secret",
        "DJANGO_DEBUG": "false",
    }
    if counts_file is not None:
        env["BENCH_DB_COUNTS"] = str(counts_file)
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    script = SETUP.format(sim=sim_url, limit=CONCURRENCY, setup=setup)
    made_by = subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    made = json.loads(made_by.stdout.strip().splitlines()[-1])
    started: list[Service] = []
    if processes == 1:
        port = free_port()
        command = server.command("127.0.0.1", port)  # as manage.py serve runs it
        if count_writes:
            command[1:3] = [str(BENCH / "daphne_counted.py")]  # in place of "-m chatsite.server"
        pinned = {cores[0]} if cores else None
        started.append(spawn("daphne", command, f"http://127.0.0.1:{port}", tmp, env, cores=pinned))
    else:
        port, listeners = shared_port_listeners(processes)
        try:
            for i, listener in enumerate(listeners):
                fd = listener.fileno()
                command = server.command("127.0.0.1", port)
                command[command.index("-b") : command.index("-p") + 2] = ["--fd", str(fd)]
                pinned = {cores[i]} if cores else None
                url = f"http://127.0.0.1:{port}"
                started.append(
                    spawn(f"daphne{i}", command, url, tmp, env, cores=pinned, pass_fds=(fd,))
                )
        finally:
            for listener in listeners:
                listener.close()
    for service in started:
        wait_http(service, "/login/")
    return Slipstream(
        started[0], database, made["key"], made["session"], counts_file, processes=started
    )


# ------------------------------------------------------------------------------------------------
# The peer: LiteLLM's proxy in its own virtualenv
# ------------------------------------------------------------------------------------------------
def peer_venv() -> Path:
    """``bench/.venv-litellm`` with ``litellm[proxy]`` and py-spy at the pinned versions; created
    (about a minute) when missing or at other versions. Returns its ``bin`` directory."""
    bin_dir = PEER_VENV / "bin"
    stamp = PEER_VENV / f".installed-litellm-{LITELLM_VERSION}-py-spy-{PYSPY_VERSION}"
    if stamp.exists():
        return bin_dir
    if not (bin_dir / "python").exists():
        print(f"creating {PEER_VENV.relative_to(ROOT)} ...", flush=True)
        subprocess.run([PYTHON, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True
    )
    print(f"installing litellm[proxy]=={LITELLM_VERSION} and py-spy=={PYSPY_VERSION} ...")
    subprocess.run(
        [
            *(str(bin_dir / "python"), "-m", "pip", "install", "--quiet"),
            f"litellm[proxy]=={LITELLM_VERSION}",
            f"py-spy=={PYSPY_VERSION}",
        ],
        check=True,
    )
    stamp.touch()
    return bin_dir


LITELLM_CONFIG = """model_list:
  - model_name: sim
    litellm_params:
      model: openai/sim
      api_base: {sim}/v1
      api_key: none
"""


def start_litellm(tmp: Path, sim_url: str) -> Service:
    """LiteLLM's proxy (one uvicorn worker, no master key, no database) with one model, ``sim``,
    an OpenAI-compatible upstream at the simulator. Its upstream connection pool (aiohttp) is
    raised to Slipstream's 2,000 (LiteLLM's default is 1,000, at most 500 per host)."""
    bin_dir = peer_venv()
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(sim=sim_url))
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at startup
        "AIOHTTP_CONNECTOR_LIMIT": str(CONCURRENCY),
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": str(CONCURRENCY),
    }
    command = [str(bin_dir / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", "1", "--telemetry", "False"]
    service = spawn("litellm", command, f"http://127.0.0.1:{port}", tmp, env)
    wait_http(service, "/health/liveliness", timeout_s=180)
    return service


def pyspy() -> Path:
    """py-spy's program: ``BENCH_PYSPY`` when set (a machine without the package index, where
    it came as a wheel), else the one in ``bench/.venv-litellm``."""
    given = os.environ.get("BENCH_PYSPY")
    return Path(given) if given else peer_venv() / "py-spy"


# ------------------------------------------------------------------------------------------------
# /proc sampling
# ------------------------------------------------------------------------------------------------
def _ticks(stat_path: Path) -> int:
    # Fields 14 and 15 (utime, stime) in clock ticks; the command name (field 2) may contain
    # spaces, so split after its closing parenthesis.
    fields = stat_path.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def proc_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the whole process, of its main thread)."""
    return (
        _ticks(Path(f"/proc/{pid}/stat")) / CLK_TCK,
        _ticks(Path(f"/proc/{pid}/task/{pid}/stat")) / CLK_TCK,
    )


def proc_rss(pid: int) -> int:
    """Resident set size in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def busy_pct(seconds: float = 3.0) -> float:
    """Busy CPU of the whole machine over the next ``seconds``, % of one core (2 cores: 200)."""
    busy0, t0 = machine_busy()[0], time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy()[0] - busy0) / (time.monotonic() - t0)


def wait_quiet(max_wait_s: float, threshold_pct: float = 30.0) -> tuple[float, float]:
    """Wait, at most ``max_wait_s``, until the machine is less than ``threshold_pct`` busy over
    3 s (other people's work skews every figure). Returns (seconds waited, last busy %)."""
    started = time.monotonic()
    busy = busy_pct()
    while busy >= threshold_pct and time.monotonic() - started < max_wait_s:
        busy = busy_pct()
    return round(time.monotonic() - started, 1), round(busy, 1)


def tcp_listen_overflows() -> int:
    """Connections the kernel dropped because a listen backlog was full (TcpExt
    ListenOverflows, all sockets): a server that accepts too slowly, or a backlog too small."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


@dataclass
class Sample:
    t: float
    cpu: dict[str, tuple[float, float]]
    rss: dict[str, int]
    threads: dict[str, int]
    busy: float


@dataclass
class Sampler:
    """Samples the named processes every ``interval_s`` in a thread, from ``start()`` to
    ``stop()``. A process that exits is dropped from later samples."""

    pids: dict[str, int]
    interval_s: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self._sample())

    def _sample(self) -> Sample:
        cpu, rss, threads = {}, {}, {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                cpu[name] = proc_cpu(pid)
                rss[name] = proc_rss(pid)
                threads[name] = proc_threads(pid)
        return Sample(time.monotonic(), cpu, rss, threads, machine_busy()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval_s)

    def _span(self, t0: float, t1: float) -> tuple[Sample, Sample] | None:
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        if len(inside) < 2:
            inside = self.samples
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]

    def cpu_pct(self, name: str, t0: float, t1: float) -> tuple[float, float] | None:
        """(% of one core used by the whole process, by its main thread) between ``t0`` and
        ``t1`` (the samples inside that window; the whole run when it is too short)."""
        span = self._span(t0, t1)
        if span is None or name not in span[0].cpu or name not in span[1].cpu:
            return None
        a, b = span
        dt = b.t - a.t
        return (
            100 * (b.cpu[name][0] - a.cpu[name][0]) / dt,
            100 * (b.cpu[name][1] - a.cpu[name][1]) / dt,
        )

    def machine_pct(self, t0: float, t1: float) -> float | None:
        """Busy CPU of the whole machine in the window, in % of one core (2 cores: 200 %)."""
        span = self._span(t0, t1)
        if span is None:
            return None
        a, b = span
        return 100 * (b.busy - a.busy) / (b.t - a.t)

    def rss_max(self, name: str) -> int | None:
        values = [s.rss[name] for s in self.samples if name in s.rss]
        return max(values) if values else None

    def threads_max(self, name: str) -> int | None:
        values = [s.threads[name] for s in self.samples if name in s.threads]
        return max(values) if values else None


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def percentiles(values: list[float], digits: int = 3) -> dict[str, float | None]:
    """p50/p90/p99 (nearest rank)."""
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        value = percentile(values, q)
        out[name] = None if value is None else round(value, digits)
    return out


def code_version() -> dict[str, Any]:
    """The commit checked out and whether the application's files differ from it, read without
    touching the index (the code may change while a long run goes on)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "chat", "chatsite", "static", "templates"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"head": None, "app_changed": None}
    return {"head": head, "app_changed": bool(changed)}


# When this script started: the servers it starts load the application as it is now.
CODE_AT_START = code_version()


def write_result(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json, with the code version the run started on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({**data, "code": CODE_AT_START}, indent=2) + "\n")
    return out


def stop_all(services: list[Service]) -> None:
    for service in reversed(services):
        service.stop()


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
