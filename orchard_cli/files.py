"""Files the operator names: settings to read, exports to write."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import yaml


def problem(exc: Exception) -> str:
    """What went wrong with a file, in one line: the OS's reason, or where YAML stopped reading."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc).splitlines()[0]


def text_content(data: bytes, name: str, expected: str) -> str:
    """``data`` as text; binary content (a NUL byte, or not UTF-8) is refused in one line saying which file was
    expected, before any service is asked: a service could only report the NUL character in its argument."""
    try:
        if b"\0" not in data:
            return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise click.ClickException(f"{name} is not a text file: expected {expected}")


def read_bytes(path: str) -> bytes:
    """A file the operator names; one that cannot be read is one line naming the file and the OS's reason."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {problem(exc)}") from None


def read_text(path: str, expected: str) -> str:
    """A text file the operator names; a binary one is refused saying what was ``expected`` (see ``text_content``)."""
    return text_content(read_bytes(path), path, expected)


def read_yaml(path: str, expected: str) -> Any:
    """A YAML (or JSON) file; one that does not parse is a one-line error naming the file and the place."""
    text = read_text(path, expected)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"cannot read {path}: {problem(exc)}") from None


def output_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for an output file: refuse a missing or read-only directory before any service is asked,
    so a command that creates something on a server does not fail only after doing so."""
    if value is None:
        return None
    directory = Path(value).parent
    if not directory.is_dir():
        raise click.BadParameter(f"the directory {directory} does not exist", ctx=ctx, param=param)
    if not os.access(directory, os.W_OK):
        raise click.BadParameter(f"cannot write in {directory}", ctx=ctx, param=param)
    return value


def write_output(path: str | Path, content: str | bytes) -> None:
    """Write an export (text as UTF-8); a failure (disk full, directory gone meanwhile) is one line."""
    try:
        if isinstance(content, bytes):
            Path(path).write_bytes(content)
        else:
            Path(path).write_text(content, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {problem(exc)}") from None
