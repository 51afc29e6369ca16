"""Push test fixtures: the sandbox Apple CA, push certificates it issues, the APNs stand-in."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from apple_sandbox.apns import ApnsSandbox, start_apns_sandbox
from apple_sandbox.push_portal import SandboxAppleCA


@dataclass(frozen=True)
class IssuedPush:
    certificate_pem: str
    private_key_pem: str


def key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="session")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("apple_sandbox")


@pytest.fixture(scope="session")
def apple_ca(sandbox_dir) -> SandboxAppleCA:
    return SandboxAppleCA.load_or_create(sandbox_dir)


@pytest.fixture(scope="session")
def push_keys() -> list[rsa.RSAPrivateKey]:
    """A few RSA keys, generated once: key generation is the slow part of issuing."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="session")
def issue_push(apple_ca: SandboxAppleCA, push_keys):
    """``issue_push(topic=..., not_after=..., key_index=...)`` -> certificate and key PEM."""

    def issue(*, topic: str | None = None, not_before: datetime | None = None, not_after: datetime | None = None,
              key_index: int = 0) -> IssuedPush:
        key = push_keys[key_index]
        certificate = apple_ca.issue_push_certificate(
            key.public_key(), topic=topic, not_before=not_before, not_after=not_after
        )
        return IssuedPush(certificate, key_pem(key))

    return issue


@pytest.fixture(scope="session")
def apns_sandbox_process(sandbox_dir, apple_ca) -> Iterator[ApnsSandbox]:
    sandbox = start_apns_sandbox(sandbox_dir)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def apns_sandbox(apns_sandbox_process: ApnsSandbox) -> ApnsSandbox:
    """The running APNs stand-in, with no scripts and an empty request log."""
    apns_sandbox_process.reset()
    return apns_sandbox_process
