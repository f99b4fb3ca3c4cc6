"""A throwaway PostgreSQL server for tests: initdb + pg_ctl from Debian's `postgresql` package, in a
temp dir, on a free 127.0.0.1 port, trust auth for one user. As root (PostgreSQL refuses to run as
root) the server runs as the `postgres` system user. `start()` returns None with a one-line
reason when the machine has no server binaries; the caller skips with it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "fspo"


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    bin: Path
    as_user: list[str]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def data_files(self) -> list[Path]:
        return [p for p in (self.root / "data").rglob("*") if p.is_file()]

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """pg_ctl as the server's user; the server's own output goes to server.log (a pipe would be held open)."""
        if args[0] in ("start", "restart"):
            args = (*args, "-l", str(self.root / "server.log"))
        with tempfile.TemporaryFile("w+") as out:
            r = subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args],
                               stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout)
            out.seek(0)
            r.stdout = r.stderr = out.read()
        return r

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer | str:
    """A running server, or a one-line reason why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'fspo-ray[postgres]')"
    bindir = _bin_dir()
    if bindir is None or not (bindir / "initdb").exists():
        return "no PostgreSQL server binaries (apt-get install -y postgresql)"
    root = Path(tempfile.mkdtemp(prefix="fspo-pg-", dir="/tmp"))  # short: the socket path must fit
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            return "running as root and there is no 'postgres' user to run the server as"
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    r = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                        "--no-sync", "-E", "UTF8"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {' '.join(r.stderr.split())[:200]}"
    for _ in range(3):  # a free port can be taken between the probe and the bind: retry
        port = _free_port()
        server = PostgresServer(root, port, bindir, as_user)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
        r = server.pg_ctl("start", "-w", "-t", "60", "-o", opts, timeout=90)
        if r.returncode == 0:
            return server
        time.sleep(0.5)
    log = (root / "server.log").read_text()[-300:] if (root / "server.log").exists() else r.stderr
    shutil.rmtree(root, ignore_errors=True)
    return f"pg_ctl start failed: {' '.join(log.split())[:200]}"
