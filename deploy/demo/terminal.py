"""Run ``orchard`` commands the way a person would, and show what they print.

Each command runs on a pseudo-terminal so the CLI colours its statuses as it does for a
person at a terminal; the demo passes the colours on only when its own output is a terminal.
"""
from __future__ import annotations

import codecs
import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOLD, RESET = "\x1b[1m", "\x1b[0m"


class DemoFailed(Exception):
    """A step of the demo did not turn out as it must; the message says which and where to look."""


@dataclass(frozen=True)
class Finished:
    exit_code: int
    output: str  # without colours or carriage returns
    raw: str  # as the command wrote it to its terminal


class Terminal:
    """Prints headings and commands, runs commands on a pty and echoes their output."""

    def __init__(self, root: Path, env: dict[str, str], colour: bool):
        self.root, self.env, self.colour = root, env, colour

    def heading(self, text: str) -> None:
        self._write(f"\n{BOLD}== {text}{RESET}\n")

    def say(self, text: str) -> None:
        self._write(f"{text}\n")

    def shown_path(self, path: Path) -> str:
        """``path`` as a person would type it in the project directory."""
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    def command(self, args: list[str]) -> None:
        self._write(f"{BOLD}$ {shlex.join(args)}{RESET}\n")

    def run(self, args: list[str], *, show: bool = True, timeout: float = 120, check: bool = True) -> Finished:
        """Run ``args`` (``orchard ...`` runs the project's CLI); fail the demo on a non-zero exit if ``check``."""
        if show:
            self.command(args)
        finished = self._run(args, show=show, timeout=timeout)
        if check and finished.exit_code != 0:
            if not show:
                self._write(finished.raw)
            raise DemoFailed(f"`{shlex.join(args)}` exited with status {finished.exit_code}")
        return finished

    def run_until(self, args: list[str], done: Callable[[Finished], bool], what: str, *, seconds: float = 40,
                  pause: float = 0.5) -> Finished:
        """Run ``args`` quietly until ``done`` says the outcome is there, then show the command and that outcome.

        For outcomes that arrive asynchronously (events between services, a sync already running).
        """
        deadline = time.monotonic() + seconds
        while True:
            finished = self._run(args, show=False, timeout=seconds)
            if done(finished):
                break
            if time.monotonic() > deadline:
                self.command(args)
                self._write(finished.raw)
                raise DemoFailed(f"waited {seconds:g} s for {what}; the service logs may say why")
            time.sleep(pause)
        self.command(args)
        self._write(finished.raw)
        if finished.exit_code != 0:
            raise DemoFailed(f"`{shlex.join(args)}` exited with status {finished.exit_code}")
        return finished

    def _executable(self, args: list[str]) -> list[str]:
        if args[0] == "orchard":
            return [str(Path(sys.executable).with_name("orchard")), *args[1:]]
        if args[0] == "python":
            return [sys.executable, *args[1:]]
        return args

    def _run(self, args: list[str], *, show: bool, timeout: float) -> Finished:
        master, slave = pty.openpty()
        try:
            process = subprocess.Popen(self._executable(args), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=self.root,
                                       env=self.env, start_new_session=True)
        finally:
            os.close(slave)
        chunks: list[str] = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoFailed(f"`{shlex.join(args)}` did not finish within {timeout:g} s")
                ready, _, _ = select.select([master], [], [], min(remaining, 1.0))
                if not ready:
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not data:
                    break
                text = decoder.decode(data)
                chunks.append(text)
                if show:
                    self._write(text)
        except BaseException:  # Ctrl-C or a timeout: the command must not outlive the demo
            process.kill()
            raise
        finally:
            os.close(master)
            exit_code = process.wait()
        raw = "".join(chunks)
        return Finished(exit_code, plain(raw), raw)

    def _write(self, text: str) -> None:
        sys.stdout.write(text if self.colour else plain(text))
        sys.stdout.flush()


def plain(text: str) -> str:
    """Text without colour codes; progress-bar redraws become separate lines."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
