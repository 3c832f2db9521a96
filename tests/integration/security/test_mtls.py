"""Mutual TLS: a server with a client CA admits only callers presenting a
certificate that CA signed; ``bitmesh.Client`` presents one from its settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bitmesh.client import Client
from bitmesh.errors import BitmeshError, InvalidArgument
from bitmesh.rpc.server import RunningServer
from bitmesh.rpc.service_main import start_service
from sensitivity_svc.servicer import build
from tests.integration.security.certs import TlsFiles, make_tls_files
from tests.integration.security.conftest import TOKEN, make_settings

pytestmark = pytest.mark.integration

UNKNOWN_JOB = "sensitivity-0000000000000000"


@pytest.fixture(scope="module")
def mutual(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("artifacts"),
        auth_token=TOKEN,
        tls_cert_file=str(tls_files.server_cert),
        tls_key_file=str(tls_files.server_key),
        tls_client_ca_file=str(tls_files.ca_cert),
    )
    running = start_service("sensitivity", build, settings, port=0)
    yield running
    running.stop(1)


def _call(server: RunningServer, tmp_path: Path, **tls: str) -> str:
    """The status of a GetAnalysis for an unknown job (NOT_FOUND = admitted)."""
    settings = make_settings(tmp_path, auth_token=TOKEN, **tls)
    with Client(settings, addresses={"sensitivity": f"localhost:{server.port}"}) as client:
        try:
            client.get_analysis(UNKNOWN_JOB)
        except BitmeshError as exc:
            return exc.status_name
    return "OK"


def test_a_client_certificate_from_the_ca_is_admitted(
    mutual: RunningServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    status = _call(
        mutual,
        tmp_path,
        tls_ca_file=str(tls_files.ca_cert),
        tls_client_cert_file=str(tls_files.client_cert),
        tls_client_key_file=str(tls_files.client_key),
    )
    assert status == "NOT_FOUND"  # through the handshake and the token: the servicer answered


def test_no_certificate_or_one_from_another_ca_is_refused(
    mutual: RunningServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    assert _call(mutual, tmp_path, tls_ca_file=str(tls_files.ca_cert)) == "UNAVAILABLE"
    stranger = make_tls_files(tmp_path / "other", ca_name="another-ca")
    status = _call(
        mutual,
        tmp_path,
        tls_ca_file=str(tls_files.ca_cert),
        tls_client_cert_file=str(stranger.client_cert),
        tls_client_key_file=str(stranger.client_key),
    )
    assert status == "UNAVAILABLE"


def test_half_a_client_identity_or_an_unreadable_file_names_the_setting(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    half = make_settings(
        tmp_path,
        tls_ca_file=str(tls_files.ca_cert),
        tls_client_cert_file=str(tls_files.client_cert),
    )
    with Client(half) as client, pytest.raises(InvalidArgument, match="go together"):
        client.channel("sensitivity")
    missing = make_settings(
        tmp_path,
        tls_ca_file=str(tls_files.ca_cert),
        tls_client_cert_file=str(tmp_path / "absent.crt"),
        tls_client_key_file=str(tls_files.client_key),
    )
    with (
        Client(missing) as client,
        pytest.raises(InvalidArgument, match=r"BITMESH_TLS_CLIENT_CERT_FILE .*cannot be read"),
    ):
        client.channel("sensitivity")
