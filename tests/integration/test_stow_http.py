"""daemon.destinations.stow against a real HTTP server on a free 127.0.0.1 port: status mapping, body, auth, multipart.

A real socket rather than a mocked client, because what matters is what arrives on the wire (one multipart part that
parses back to the file's bytes, the headers) and how real connection failures (refused, no answer) surface.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from predictd.daemon.config_send import StowDestination
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.stow import stow_file
from tests.support import CR_JLSL, free_port
from tests.support.certs import make_pki

SOURCE = pydicom.dcmread(CR_JLSL, stop_before_pixels=True)
SOP_UID = str(SOURCE.SOPInstanceUID)
OTHER_UID = "1.2.3.4.5.6.7.8.9"
CR = "1.2.840.10008.5.1.4.1.1.1"


def answer(referenced: Sequence[str] = (), failed: Sequence[tuple[str, int]] = ()) -> bytes:
    """A STOW-RS response data set in DICOM JSON, as a PS3.18 server writes it."""

    def ref(uid: str) -> dict[str, object]:
        return {"00081150": {"vr": "UI", "Value": [CR]}, "00081155": {"vr": "UI", "Value": [uid]}}

    data = {
        "00081198": {
            "vr": "SQ",
            "Value": [{**ref(uid), "00081197": {"vr": "US", "Value": [code]}} for uid, code in failed],
        },
        "00081199": {"vr": "SQ", "Value": [ref(uid) for uid in referenced]},
    }
    return json.dumps(data).encode()


@dataclass
class Received:
    path: str
    headers: Message
    body: bytes


class StowServer(ThreadingHTTPServer):
    """Answers every POST with ``status`` and ``reply`` and keeps what arrived in ``received``."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if context is not None:  # HTTPS: the handshake runs in the request's thread
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self.status = 200
        self.reply = b""
        self.received: list[Received] = []

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/dicom-web"

    def dest(self, **kwargs: object) -> StowDestination:
        return StowDestination.model_validate({"type": "stow", "name": "pacs", "url": self.url, **kwargs})


class _Handler(BaseHTTPRequestHandler):
    server: StowServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(Received(self.path, self.headers, body))
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(self.server.reply)))
        self.end_headers()
        self.wfile.write(self.server.reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(context: ssl.SSLContext | None = None) -> Iterator[StowServer]:
    """A StowServer answering on a free port in a thread, shut down on exit (also used by test_destinations);
    HTTPS with ``context``."""
    srv = StowServer(context)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture
def server() -> Iterator[StowServer]:
    with serving() as srv:
        yield srv


def _refused(server: StowServer, dest: StowDestination | None = None) -> SendError:
    with pytest.raises(SendError) as info:
        stow_file(CR_JLSL, dest or server.dest())
    message = str(info.value)
    assert server.url + "/studies" in message
    assert str(SOURCE.PatientID) not in message
    assert str(SOURCE.PatientName) not in message
    return info.value


def test_200_with_our_instance_referenced_is_success(server: StowServer) -> None:
    server.reply = answer(referenced=[SOP_UID])
    stow_file(CR_JLSL, server.dest())
    [request] = server.received
    assert request.path == "/dicom-web/studies"
    assert request.headers["Accept"] == "application/dicom+json"


def test_200_without_body_is_success(server: StowServer) -> None:
    stow_file(CR_JLSL, server.dest())
    assert len(server.received) == 1


def test_200_listing_our_instance_as_failed_is_an_error(server: StowServer) -> None:
    server.reply = answer(referenced=[OTHER_UID], failed=[(SOP_UID, 0x0110)])
    error = _refused(server)
    assert not error.retryable
    assert "HTTP 200" in str(error)
    assert "0x0110" in str(error)


def test_202_with_our_instance_failed_is_an_error(server: StowServer) -> None:
    server.status = 202
    server.reply = answer(referenced=[OTHER_UID], failed=[(SOP_UID, 0xC000)])
    error = _refused(server)
    assert not error.retryable
    assert "HTTP 202" in str(error)
    assert "0xC000" in str(error)


def test_202_out_of_resources_for_our_instance_is_retryable(server: StowServer) -> None:
    server.status = 202
    server.reply = answer(failed=[(SOP_UID, 0xA700)])
    assert _refused(server).retryable


def test_202_with_our_instance_referenced_and_another_failed_is_success(server: StowServer) -> None:
    server.status = 202
    server.reply = answer(referenced=[SOP_UID], failed=[(OTHER_UID, 0xC000)])
    stow_file(CR_JLSL, server.dest())


def test_202_without_our_instance_referenced_is_an_error(server: StowServer) -> None:
    server.status = 202
    server.reply = answer(referenced=[OTHER_UID])
    assert not _refused(server).retryable


def test_409_is_permanent_and_names_the_failure_reason(server: StowServer) -> None:
    server.status = 409
    server.reply = answer(failed=[(SOP_UID, 0x0110)])
    error = _refused(server)
    assert not error.retryable
    assert "HTTP 409 Conflict" in str(error)
    assert "failure reason 0x0110" in str(error)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 415])
def test_client_errors_are_permanent(server: StowServer, status: int) -> None:
    server.status = status
    server.reply = b"<html>no</html>"
    error = _refused(server)
    assert not error.retryable
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_busy_or_failing_servers_are_retryable(server: StowServer, status: int) -> None:
    server.status = status
    error = _refused(server)
    assert error.retryable
    assert f"HTTP {status}" in str(error)


def test_401_message_does_not_leak_url_credentials(server: StowServer) -> None:
    server.status = 401
    url = server.url.replace("http://", "http://someone:s3cret@")
    dest = StowDestination(type="stow", name="pacs", url=url)
    with pytest.raises(SendError) as info:
        stow_file(CR_JLSL, dest)
    assert not info.value.retryable
    assert "HTTP 401 Unauthorized" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert server.url + "/studies" in str(info.value)


def test_basic_auth_and_extra_headers_arrive(server: StowServer) -> None:
    server.reply = answer(referenced=[SOP_UID])
    dest = server.dest(username="predictd", password="pw:with colon", headers={"X-Tenant": "radiology"})
    stow_file(CR_JLSL, dest)
    [request] = server.received
    # "predictd:pw:with colon" in base64
    assert request.headers["Authorization"] == "Basic cHJlZGljdGQ6cHc6d2l0aCBjb2xvbg=="
    assert request.headers["X-Tenant"] == "radiology"


def test_no_credentials_no_authorization_header(server: StowServer) -> None:
    stow_file(CR_JLSL, server.dest())
    assert "Authorization" not in server.received[0].headers


def test_body_is_one_multipart_part_with_exactly_the_files_bytes(server: StowServer) -> None:
    server.reply = answer(referenced=[SOP_UID])
    stow_file(CR_JLSL, server.dest())
    [request] = server.received
    content_type = request.headers["Content-Type"]
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body, policy=email.policy.HTTP
    )
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 1
    [part] = parts
    assert isinstance(part, Message)
    assert part.get_content_type() == "application/dicom"
    assert part.get_payload(decode=True) == CR_JLSL.read_bytes()


def test_nobody_listening_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(SendError) as info:
        stow_file(CR_JLSL, StowDestination(type="stow", name="pacs", url=url, timeout_seconds=5))
    assert info.value.retryable
    assert url + "/studies" in str(info.value)


def test_a_server_that_never_answers_is_retryable_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # listens, never accepts nor answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        started = time.monotonic()
        with pytest.raises(SendError) as info:
            stow_file(CR_JLSL, StowDestination(type="stow", name="pacs", url=url, timeout_seconds=0.5))
    assert info.value.retryable
    assert "timeout 0.5s" in str(info.value)
    assert time.monotonic() - started < 30  # the timeout was honoured, not pytest's


def test_unreadable_file_is_permanent(tmp_path: Path, server: StowServer) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM")
    with pytest.raises(SendError) as info:
        stow_file(junk, server.dest())
    assert not info.value.retryable
    assert server.received == []


def test_https_with_the_destinations_ca_and_client_certificate(tmp_path: Path) -> None:
    """The server requires a client certificate from the test CA; the destination's tls table brings both."""
    pki = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.certificate, pki.server.private_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    with serving(context) as srv:
        srv.reply = answer(referenced=[SOP_UID])
        tls = {"ca_bundle": pki.ca, "certificate": pki.client.certificate, "private_key": pki.client.private_key}
        stow_file(CR_JLSL, srv.dest(tls=tls))
        assert len(srv.received) == 1
        with pytest.raises(SendError, match="certificate not trusted") as caught:
            stow_file(CR_JLSL, srv.dest(tls={**tls, "ca_bundle": pki.rogue_ca}))
        assert not caught.value.retryable
        assert len(srv.received) == 1
