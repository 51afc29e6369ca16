"""Secrets at rest: private keys, OAuth tokens, content tokens, bind passwords.

Values are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under the key from
``ORCHARD_SECRET_KEY`` (or the key file a development setup generates). Several
comma-separated keys may be given to rotate: the first seals, all of them open.
A sealed value never reveals its plaintext in ``repr``, logs or RPC results.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from nameko.extensions import DependencyProvider

from shared.errors import ValidationError


class SecretBox:
    def __init__(self, keys: str):
        parsed = [key.strip() for key in keys.split(",") if key.strip()]
        if not parsed:
            raise ValidationError("no secret key is configured: set ORCHARD_SECRET_KEY (see the README)")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in parsed])
        except ValueError:
            raise ValidationError(
                "ORCHARD_SECRET_KEY is not a valid key: generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
            ) from None

    def __repr__(self) -> str:
        return "<SecretBox>"

    def seal(self, plaintext: str | bytes) -> str:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        return self._fernet.encrypt(data).decode("ascii")

    def open_bytes(self, sealed: str) -> bytes:
        try:
            return self._fernet.decrypt(sealed.encode("ascii"))
        except InvalidToken:
            raise ValidationError(
                "a stored secret cannot be decrypted with the configured ORCHARD_SECRET_KEY; "
                "restore the key it was sealed with (keys can be listed comma-separated while rotating)"
            ) from None

    def open(self, sealed: str) -> str:
        return self.open_bytes(sealed).decode()


def load_key(explicit: str | None = None, key_file: str | os.PathLike | None = None, create: bool = False) -> str:
    """The configured key: explicit value, else ``ORCHARD_SECRET_KEY``, else the key file."""
    key = explicit or os.environ.get("ORCHARD_SECRET_KEY")
    if key:
        return key
    path = Path(key_file or os.environ.get("ORCHARD_SECRET_KEY_FILE") or "var/secret.key")
    if path.exists():
        return path.read_text().strip()
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key().decode()
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key
    raise ValidationError(
        f"no secret key: set ORCHARD_SECRET_KEY or create {path} (`make run` generates a development key there)"
    )


class Secrets(DependencyProvider):
    """Gives workers the service's ``SecretBox`` (one per process, key read at start)."""

    def setup(self) -> None:
        self.box = SecretBox(load_key(self.container.config.get("SECRET_KEY"),
                                      self.container.config.get("SECRET_KEY_FILE")))

    def get_dependency(self, worker_ctx: object) -> SecretBox:
        return self.box
