"""Render deploy/nginx.conf.template, and run nginx in the foreground from it.

`python -m deploy.nginx --node 10.0.0.11:8080 --node 10.0.0.12:8080` prints a
config for production; `make cluster` and the tests use `NginxProcess`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
# Debian installs nginx in /usr/sbin, which is not on every user's PATH.
SBIN_PATHS = (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx"))
# Characters that would end an nginx directive or block inside a value.
UNSAFE_VALUE = re.compile(r"[\s;{}'\"#]")


def find_nginx() -> str | None:
    """Return the path of the nginx binary, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    for path in SBIN_PATHS:
        if os.access(path, os.X_OK):
            return str(path)
    return None


def render_config(
    template: str, values: Mapping[str, str], nodes: Sequence[str]
) -> str:
    """Fill in the `{{ name }}` placeholders of an nginx config template.

    A line with `{{ node }}` is repeated once per node. Placeholders in comment
    lines are left as they are. Raises ValueError for a placeholder without a
    value, for an empty node list, and for a value that is not one nginx word.
    """
    if not nodes:
        raise ValueError("at least one node address is required")
    for name, value in [*values.items(), *(("node", node) for node in nodes)]:
        if not value or UNSAFE_VALUE.search(value):
            raise ValueError(
                f"{name}={value!r} is invalid: use a non-empty value without"
                " spaces, quotes, ';', '{', '}' or '#'"
            )
    lines: list[str] = []
    for line in template.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            lines.append(line)
        elif "node" in PLACEHOLDER.findall(line):
            lines.extend(_fill(line, {**values, "node": node}) for node in nodes)
        else:
            lines.append(_fill(line, values))
    return "".join(lines)


def _fill(line: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(
                f"the template's placeholder {{{{ {name} }}}} has no value"
            )
        return values[name]

    return PLACEHOLDER.sub(replace, line)


class NginxProcess:
    """nginx in the foreground, with its config, pid, logs and temp files in `workdir`.

    `listen` is nginx's `listen` value, such as `127.0.0.1:8080`, and `nodes` are
    the chat servers' HOST:PORT addresses.
    """

    def __init__(
        self,
        workdir: Path,
        listen: str,
        nodes: Sequence[str],
        *,
        binary: str | None = None,
        template: Path = TEMPLATE,
    ) -> None:
        found = binary or find_nginx()
        if found is None:
            raise FileNotFoundError(
                "nginx is not installed: run 'apt-get install nginx' as root"
            )
        self.binary = found
        self.workdir = workdir
        self.listen = listen
        self.nodes = list(nodes)
        self.template = template
        self.config_path = workdir / "nginx.conf"
        self.state_dir = workdir / "state"
        self.log_dir = workdir / "logs"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def access_log_path(self) -> Path:
        return self.log_dir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.log_dir / "error.log"

    def write_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "listen": self.listen,
            "state_dir": str(self.state_dir),
            "log_dir": str(self.log_dir),
        }
        text = render_config(self.template.read_text(), values, self.nodes)
        self.config_path.write_text(text)

    def start(self, timeout: float = 10) -> None:
        """Write the config, start nginx and wait until it accepts connections."""
        self.write_config()

        # Started as root, nginx runs its workers as an unprivileged user, who
        # cannot enter a private temporary folder to write request bodies.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        output = (self.log_dir / "nginx.out").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.workdir),
                "-c",
                str(self.config_path),
                "-e",
                str(self.error_log_path),
                "-g",
                directives,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            # Ctrl-C in a terminal reaches the whole foreground process group;
            # the owner of this object decides when nginx stops.
            start_new_session=True,
        )
        output.close()

        host, _, port = self.listen.rpartition(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited at start with code {self.process.returncode}:\n"
                    + self.log()
                )
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.listen} within {timeout} s")

    def stop(self, timeout: float = 10) -> None:
        """Stop nginx with SIGTERM, its fast shutdown, and SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log(self) -> str:
        """Return nginx's own output and its error log."""
        parts = []
        for path in (self.log_dir / "nginx.out", self.error_log_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.nginx",
        description="Print an nginx config for chat server nodes behind one address.",
    )
    parser.add_argument(
        "--node",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="address of one chat server node; repeat for each node",
    )
    parser.add_argument(
        "--listen", default="80", help="nginx listen value (default: %(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        default="/var/lib/nginx",
        help="folder for the pid file and temporary files (default: %(default)s)",
    )
    parser.add_argument(
        "--log-dir",
        default="/var/log/nginx",
        help="folder for access.log and error.log (default: %(default)s)",
    )
    parser.add_argument(
        "--template", type=Path, default=TEMPLATE, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    values = {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "log_dir": args.log_dir,
    }
    try:
        sys.stdout.write(render_config(args.template.read_text(), values, args.node))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
