"""The backend and the four proxies, configured as BENCHMARKS.md says ("How it was
measured").

All on loopback, one worker/thread each, upstream keep-alive on, access logs
off. Each proxy is a ``Peer`` that writes its config into the run's work
directory and starts under the ``Supervisor``; ``Running.pids()`` are the
processes whose CPU and memory are counted (NGINX: master + worker).
"""

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.processes import HarnessError, Proc, Supervisor, run, wait_for_port

SMALL_BODY = "Hello from the backend!\n"
BODIES = {"small": "/", "16k": "/16k", "1m": "/1m"}  # scenario body -> backend path
BODY_SIZES = {"small": len(SMALL_BODY), "16k": 16 * 1024, "1m": 1024 * 1024}

TOOLS = {"nginx": "nginx", "haproxy": "haproxy", "caddy": "caddy", "wrk": "wrk"}
# Tools that only one measurement needs: when apt-get cannot install them, that
# measurement logs why and skips itself instead of the whole run failing.
OPTIONAL_TOOLS = {"strace": "strace", "valgrind": "valgrind"}


def _missing(tools: dict[str, str], names: list[str] | None) -> list[str]:
    """Debian packages of the tools (of ``names``, or all) that are not installed."""
    return [
        pkg
        for tool, pkg in tools.items()
        if (names is None or tool in names)
        and shutil.which(tool) is None
        and not Path(f"/usr/sbin/{tool}").exists()
    ]


def ensure_tools(names: list[str] | None = None) -> list[str]:
    """apt-get install whichever of nginx, haproxy, caddy, wrk (required) and strace,
    valgrind (optional: a failure to install them is not an error) is missing."""
    missing = _missing(TOOLS, names)
    optional = _missing(OPTIONAL_TOOLS, names)
    if missing or optional:
        print(f"installing {', '.join(missing + optional)} with apt-get ...", flush=True)
        _apt_get(["update", "-qq"], timeout=300, required=False)
    if missing:
        _apt_get(["install", "-y", "-qq", *missing], timeout=900, required=True)
    if optional:
        _apt_get(["install", "-y", "-qq", *optional], timeout=300, required=False)
    return missing + optional


def _apt_get(args: list[str], *, timeout: float, required: bool) -> None:
    """One bounded apt-get step; when not ``required``, a failure or timeout is only
    reported, since whatever needs the package checks for it and skips itself."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", *args], timeout=timeout, check=required, env=env)
    except HarnessError as error:
        if required:
            raise
        print(f"apt-get {' '.join(args)}: {error}", flush=True)


def _nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Running:
    """A started peer: its process, port, config file and admin address."""

    peer: "Peer"
    proc: Proc
    port: int
    upstream: int
    config: Path
    admin: str = ""
    extra: dict = field(default_factory=dict)

    def pids(self) -> list[int]:
        return self.proc.pids()

    def worker_pid(self) -> int:
        """The process that serves the requests, for tools that attach to one process
        (strace): NGINX's worker, the master's only child; fastpause, HAProxy and Caddy
        serve from the process that was started."""
        children = self.pids()[1:]
        if len(children) > 1:
            raise HarnessError(
                f"{self.peer.name}: {len(children)} child processes, expected one worker"
            )
        return children[0] if children else self.proc.pid


@dataclass(frozen=True)
class TlsFiles:
    """One certificate for every peer's HTTPS listener: PEM certificate, key, and both
    in one file (HAProxy's ``crt``)."""

    cert: Path
    key: Path
    combined: Path


class Peer:
    name = ""
    label = ""
    # Processes or threads serving requests (NGINX worker_processes, HAProxy nbthread,
    # fastpause workers, Caddy GOMAXPROCS): 1 everywhere but the workers scenario.
    workers = 1
    # Set for the HTTPS scenarios: the listener terminates TLS 1.3 with this certificate.
    tls: TlsFiles | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self, sup: Supervisor, port: int, upstream: int, *, hold: bool = False) -> Running:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class Backend:
    """NGINX origin: ``return 200`` small body on ``/`` (and ``/up``, the health
    check path of ``fastpause deploy``); static 16 KiB and 1 MiB
    files on ``/16k`` and ``/1m`` (NGINX's config parser refuses a
    ``return`` string over 4 KiB), sendfile on, keep-alive effectively unlimited."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.www = workdir / "www"
        self.www.mkdir(exist_ok=True)
        # mkdtemp makes the work directory 0700; NGINX's worker runs as nobody.
        for path in (workdir, self.www):
            path.chmod(0o755)
        (self.www / "16k").write_bytes(b"x" * BODY_SIZES["16k"])
        (self.www / "1m").write_bytes(b"y" * BODY_SIZES["1m"])

    def start(self, sup: Supervisor, port: int, *, wait: bool = True) -> Proc:
        base = self.workdir / f"backend-{port}"
        base.mkdir(exist_ok=True)
        conf = base / "nginx.conf"
        conf.write_text(
            _nginx_common(base)
            + f"""
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
{_nginx_temp_paths(base)}
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        root {self.www};
        location = / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = /up {{ return 200 "ok\\n"; }}
        location / {{ }}
    }}
}}
"""
        )
        proc = sup.start(
            f"backend-{port}",
            [_nginx_binary(), "-e", str(base / "error.log"), "-p", str(base), "-c", str(conf)],
        )
        if wait:
            wait_for_port(port, proc)
        return proc


def _nginx_common(base: Path, workers: int = 1) -> str:
    return f"""
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 19000; }}
"""


def _nginx_temp_paths(base: Path) -> str:
    return "\n".join(
        f"    {kind}_temp_path {base}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


class Fastpause(Peer):
    name = "fastpause"
    label = "fastpause"
    # Set by ``build``: a private copy of fastpause, so that a concurrent reinstall of
    # the shared virtualenv cannot change the proxy in the middle of a run.
    pythonpath: str | None = None
    built_from: str = ""

    @classmethod
    def env(cls) -> dict[str, str]:
        return {"PYTHONPATH": cls.pythonpath} if cls.pythonpath else {}

    @classmethod
    def build(cls, source: Path, target: Path) -> None:
        """``pip install --target`` the working tree into ``target`` and use that copy."""
        commit = run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], timeout=30, check=False
        ).strip()
        dirty = run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "src"],
            timeout=30,
            check=False,
        ).strip()
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(source),
            ],
            timeout=900,
        )
        cls.pythonpath = str(target)
        cls.built_from = f"commit {commit}" + (" + uncommitted changes in src/" if dirty else "")

    def write_config(self, path: Path, port: int, upstream: int, admin: str) -> None:
        tls = ""
        if self.tls:
            tls = (
                f'tls_min_version = "1.3"\n\n[[certificates]]\ncert = "{self.tls.cert}"\n'
                f'key = "{self.tls.key}"\n'
            )
        # plain: a bare HOST:PORT, which a --compare reference build older than
        # "http://" listeners reads too
        path.write_text(
            f"""listen = ["{"https://" if self.tls else ""}127.0.0.1:{port}"]
admin = "{admin}"
workers = {self.workers}
{tls}

[[routes]]
name = "app"
upstreams = ["127.0.0.1:{upstream}"]
try_duration = "30s"
try_interval = "250ms"
max_held = 10000
"""
        )

    def start(self, sup: Supervisor, port: int, upstream: int, *, hold: bool = False) -> Running:
        base = self.workdir / f"fastpause-{port}"
        base.mkdir(exist_ok=True)
        conf = base / "fastpause.toml"
        admin = f"unix:{base}/admin.sock"
        self.write_config(conf, port, upstream, admin)
        proc = sup.start(
            f"fastpause-{port}",
            [sys.executable, "-m", "fastpause", "run", "--config", str(conf)],
            env=self.env(),
        )
        wait_for_port(port, proc)
        return Running(self, proc, port, upstream, conf, admin)

    def cli(self, running: Running, *args: str, timeout: float = 60.0) -> str:
        return run(
            [sys.executable, "-m", "fastpause", *args, "--admin", running.admin],
            timeout=timeout,
            env={**os.environ, **self.env()},
        )

    def version(self) -> str:
        env = {**os.environ, **Fastpause.env()}
        out = run([sys.executable, "-m", "fastpause", "version"], timeout=30, env=env).strip()
        return out + (f" (built from {Fastpause.built_from})" if Fastpause.built_from else "")

    @staticmethod
    def has_command(command: str) -> bool:
        """Whether this build of fastpause offers ``reload`` / ``deploy``."""
        out = run(
            [sys.executable, "-m", "fastpause", command, "--help"],
            timeout=30,
            check=False,
            env={**os.environ, **Fastpause.env()},
        )
        return "invalid choice" not in out and "usage:" in out


class FastpauseRef(Fastpause):
    """fastpause built from another commit: the reference side of ``--compare``."""

    name = "fastpause-ref"
    label = "fastpause (ref)"
    pythonpath: str | None = None
    built_from: str = ""


class Nginx(Peer):
    name = "nginx"
    label = "NGINX"

    def start(self, sup: Supervisor, port: int, upstream: int, *, hold: bool = False) -> Running:
        base = self.workdir / f"nginx-{port}"
        base.mkdir(exist_ok=True)
        conf = base / "nginx.conf"
        conf.write_text(
            _nginx_common(base, self.workers)
            + f"""
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{_nginx_temp_paths(base)}
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port}{" ssl" if self.tls else ""} backlog=16384;
{self._tls_directives()}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        proc = sup.start(
            f"nginx-{port}",
            [_nginx_binary(), "-e", str(base / "error.log"), "-p", str(base), "-c", str(conf)],
        )
        wait_for_port(port, proc)
        return Running(self, proc, port, upstream, conf)

    def _tls_directives(self) -> str:
        if not self.tls:
            return ""
        return (
            f"        ssl_certificate {self.tls.cert};\n"
            f"        ssl_certificate_key {self.tls.key};\n"
            "        ssl_protocols TLSv1.3;\n"
            "        ssl_session_cache shared:SSL:10m;"
        )

    def version(self) -> str:
        out = run([_nginx_binary(), "-v"], timeout=30)
        return out.strip().split("/", 1)[-1]


class Haproxy(Peer):
    name = "haproxy"
    label = "HAProxy"

    def start(self, sup: Supervisor, port: int, upstream: int, *, hold: bool = False) -> Running:
        conf = self.workdir / f"haproxy-{port}.cfg"
        conf.write_text(self.config(port, upstream))
        proc = sup.start(f"haproxy-{port}", ["haproxy", "-db", "-f", str(conf)])
        wait_for_port(port, proc)
        return Running(self, proc, port, upstream, conf)

    def config(self, port: int, upstream: int, extra_global: str = "") -> str:
        tls = f" ssl crt {self.tls.combined} ssl-min-ver TLSv1.3" if self.tls else ""
        return f"""global
    nbthread {self.workers}
    maxconn 9000
{extra_global}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s

frontend fe
    bind 127.0.0.1:{port}{tls}
    default_backend be

backend be
    server app 127.0.0.1:{upstream}
"""

    def version(self) -> str:
        out = run(["haproxy", "-v"], timeout=30)
        found = re.search(r"version (\S+)", out)
        return found.group(1) if found else out.splitlines()[0]


class Caddy(Peer):
    name = "caddy"
    label = "Caddy"

    def caddyfile(self, port: int, upstream: int, admin: str, hold: bool) -> str:
        retry = "\n\t\tlb_try_duration 30s\n\t\tlb_try_interval 250ms" if hold else ""
        tls = f"\n\ttls {self.tls.cert} {self.tls.key} {{\n\t\tprotocols tls1.3\n\t}}"
        return f"""{{
\tadmin {admin}
\tauto_https off
}}

{self.scheme}://:{port} {{
\tbind 127.0.0.1{tls if self.tls else ""}
\treverse_proxy 127.0.0.1:{upstream} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host 512
\t\t}}{retry}
\t}}
}}
"""

    def env(self) -> dict[str, str]:
        home = self.workdir / "caddy-home"
        home.mkdir(exist_ok=True)
        return {
            "GOMAXPROCS": str(self.workers),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
        }

    def start(self, sup: Supervisor, port: int, upstream: int, *, hold: bool = False) -> Running:
        conf = self.workdir / f"Caddyfile-{port}"
        admin = f"unix/{self.workdir}/caddy-{port}-admin.sock"
        conf.write_text(self.caddyfile(port, upstream, admin, hold))
        proc = sup.start(
            f"caddy-{port}",
            ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"],
            env=self.env(),
        )
        wait_for_port(port, proc)
        return Running(self, proc, port, upstream, conf, admin, {"hold": hold})

    def reload(self, running: Running, upstream: int) -> None:
        """Point the route at another backend: edit the Caddyfile, ``caddy reload``."""
        running.config.write_text(
            self.caddyfile(running.port, upstream, running.admin, running.extra["hold"])
        )
        run(
            [
                "caddy",
                "reload",
                "--config",
                str(running.config),
                "--adapter",
                "caddyfile",
                "--address",
                running.admin,
            ],
            timeout=60,
            env={**os.environ, **self.env()},
        )
        running.upstream = upstream

    def version(self) -> str:
        return run(["caddy", "version"], timeout=30).strip().split()[0]


PEERS = {peer.name: peer for peer in (Fastpause, Nginx, Haproxy, Caddy)}


def tool_versions() -> dict[str, str]:
    """Versions of wrk and the Python pieces (the peers report their own)."""
    import platform

    versions = {"python": platform.python_version()}
    for module in ("uvloop", "httptools", "Cython", "matplotlib", "pytest_benchmark"):
        try:
            from importlib.metadata import version

            versions[module] = version(module.replace("_", "-"))
        except Exception:
            pass
    out = run(["wrk", "-v"], timeout=30, check=False)
    found = re.search(r"wrk (\S+)", out)
    versions["wrk"] = found.group(1) if found else "?"
    return versions
