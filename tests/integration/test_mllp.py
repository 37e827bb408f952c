"""daemon.destinations.hl7 against a real MLLP listener: python-hl7's own asyncio server on a free port, in a thread.

The listener answers each message as a test tells it to (an ACK with a given code, nothing, a trickle, garbage), so
every branch of the ACK handling runs over a real socket.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import hl7
import hl7.mllp
import pytest
from pydicom.dataset import Dataset

from predictd.daemon.config_base import ClientTls
from predictd.daemon.config_send import Hl7Destination
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.hl7 import send_hl7
from predictd.reporting.hl7 import message_control_id, oru_r01
from tests.support import free_port, wait_until
from tests.support.certs import make_pki

SR_UID = "1.2.826.0.1.3680043.8.498.777"
CONTROL_ID = message_control_id(SR_UID)
PATIENT = "Müller^Zoë"

Answer = Callable[[str, hl7.mllp.HL7StreamWriter], Awaitable[None]]
"""What the listener does with one received message (its text) on that connection."""


class MllpListener:
    """python-hl7's ``start_hl7_server`` running on its own event loop in a daemon thread."""

    def __init__(self, answer: Answer, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self._ssl = ssl_context
        self.received: list[str] = []
        self.connections = 0
        self._answer = answer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp-listener", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> MllpListener:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        # Awaited on the listener's loop, so python-hl7's get_event_loop() finds that loop.
        self._server = await hl7.mllp.start_hl7_server(
            self._handle, "127.0.0.1", self.port, encoding="utf-8", ssl=self._ssl
        )

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                block = await reader.readblock()  # the raw frame content, to compare byte for byte
                text = block.decode("utf-8")
                self.received.append(text)
                await self._answer(text, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()


def ack(code: str, text: str = "", control_id: str | None = None) -> Answer:
    """Answer with python-hl7's ``create_ack``, optionally with an MSA-3 text or a foreign MSA-2."""

    async def answer(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
        reply = hl7.parse(message).create_ack(code, message_id="ACK0001", application="DICTATION")
        if text:
            reply.segment("MSA").assign_field(text, 3)
        if control_id is not None:
            reply.segment("MSA").assign_field(control_id, 2)
        writer.writemessage(reply)
        await writer.drain()

    return answer


async def silent(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
    """Accept the message and never answer (the handler goes back to reading until the client hangs up)."""


async def trickle(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
    """Start an ACK frame and then send one byte every 50 ms, never the end block."""
    writer.write(hl7.mllp.streams.START_BLOCK + b"MSH|")
    while True:
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)


async def hang_up(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
    writer.close()


async def garbage(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
    writer.writeblock(b"this is not an acknowledgment")
    await writer.drain()


async def unframed(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
    """A well-formed ACK without the MLLP start block."""
    reply = hl7.parse(message).create_ack("AA")
    writer.write(str(reply).encode("utf-8") + hl7.mllp.streams.END_BLOCK + hl7.mllp.streams.CARRIAGE_RETURN)
    await writer.drain()


@pytest.fixture
def listen() -> Iterator[Callable[[Answer], MllpListener]]:
    started: list[MllpListener] = []

    def start(answer: Answer, ssl_context: ssl.SSLContext | None = None) -> MllpListener:
        listener = MllpListener(answer, ssl_context).start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def _dest(port: int, timeout: float = 5.0, tls: ClientTls | None = None) -> Hl7Destination:
    return Hl7Destination(type="hl7", name="dictation", host="127.0.0.1", port=port, timeout_seconds=timeout, tls=tls)


def _message() -> str:
    header = Dataset()
    header.PatientName = PATIENT
    header.PatientID = "PID-7"
    header.AccessionNumber = "ACC-9"
    header.StudyInstanceUID = "1.2.3.4"
    header.StudyDescription = "XR HIP"
    return oru_r01(
        header,
        "Right hip: total hip arthroplasty | p=0.97\nAI-generated preliminary text; not verified.",
        message_control_id=CONTROL_ID,
        now=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        sending_application="PREDICTD",
        sending_facility="RAD",
        receiving_application="DICTATION",
        receiving_facility="HOSP",
        sr_sop_instance_uid=SR_UID,
    )


def _send_fails(port: int, timeout: float = 5.0) -> SendError:
    with pytest.raises(SendError) as caught:
        send_hl7(_message(), _dest(port, timeout))
    assert PATIENT.split("^")[0] not in str(caught.value)  # no PHI in the reason
    assert "PID-7" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize("code", ["AA", "CA"])
def test_accepted_message_is_delivered_unchanged(listen: Callable[[Answer], MllpListener], code: str) -> None:
    listener = listen(ack(code))
    message = _message()
    send_hl7(message, _dest(listener.port))
    assert listener.received == [message]  # byte for byte, UTF-8 included
    received = hl7.parse(listener.received[0])
    assert str(received.segment("MSH")(10)) == CONTROL_ID
    assert str(received.segment("PID")(5)) == PATIENT
    assert str(received.segment("OBR")(25)) == "P"
    lines = [received.unescape(str(s(5))) for s in received.segments("OBX") if str(s(2)) == "TX"]
    assert lines[0] == "Right hip: total hip arthroplasty | p=0.97"


def test_resend_is_the_same_message(listen: Callable[[Answer], MllpListener]) -> None:
    listener = listen(ack("AA"))
    send_hl7(_message(), _dest(listener.port))
    send_hl7(_message(), _dest(listener.port))
    assert listener.connections == 2
    assert listener.received[0] == listener.received[1]


@pytest.mark.parametrize("code", ["AE", "CE"])
def test_application_error_is_retryable(listen: Callable[[Answer], MllpListener], code: str) -> None:
    listener = listen(ack(code, text="Database busy"))
    error = _send_fails(listener.port)
    assert error.retryable
    assert code in str(error) and "Database busy" in str(error) and CONTROL_ID in str(error)


@pytest.mark.parametrize("code", ["AR", "CR"])
def test_reject_is_permanent(listen: Callable[[Answer], MllpListener], code: str) -> None:
    listener = listen(ack(code, text="Unsupported message type"))
    error = _send_fails(listener.port)
    assert not error.retryable
    assert code in str(error) and "Unsupported message type" in str(error)


def test_nobody_listening_is_retryable() -> None:
    error = _send_fails(free_port())
    assert error.retryable and "refused" in str(error)


def test_no_answer_times_out(listen: Callable[[Answer], MllpListener]) -> None:
    listener = listen(silent)
    started = time.monotonic()
    error = _send_fails(listener.port, timeout=0.5)
    elapsed = time.monotonic() - started
    assert error.retryable and "0.5s" in str(error)
    assert elapsed < 5  # the 0.5 s deadline, with a wide margin for a loaded machine
    wait_until(lambda: listener.received, timeout=5, what="the listener to record the message")


def test_trickling_answer_hits_the_deadline(listen: Callable[[Answer], MllpListener]) -> None:
    """One deadline for the whole ACK, not a timeout per read: a byte every 50 ms must not keep us waiting."""
    listener = listen(trickle)
    started = time.monotonic()
    error = _send_fails(listener.port, timeout=0.5)
    assert error.retryable and "no complete ACK" in str(error)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (hang_up, "closed the connection"),
        (garbage, "malformed ACK"),
        (unframed, "no start block"),
        (ack("AA", control_id="SOMETHING-ELSE"), "another message"),
    ],
)
def test_bad_answers_are_retryable(listen: Callable[[Answer], MllpListener], answer: Answer, reason: str) -> None:
    listener = listen(answer)
    error = _send_fails(listener.port)
    assert error.retryable and reason in str(error)


def test_message_without_control_id_is_not_sent(listen: Callable[[Answer], MllpListener]) -> None:
    listener = listen(ack("AA"))
    with pytest.raises(SendError) as caught:
        send_hl7("PID|1||X", _dest(listener.port))
    assert not caught.value.retryable
    assert listener.connections == 0


def _tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, ClientTls, ClientTls]:
    """A listener context requiring client certificates, our trusted client settings, and settings trusting a rogue
    CA instead."""
    pki = make_pki(tmp_path / "pki")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server.certificate, pki.server.private_key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    ours = ClientTls(ca_bundle=pki.ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    wrong = ClientTls(ca_bundle=pki.rogue_ca, certificate=pki.client.certificate, private_key=pki.client.private_key)
    return server, ours, wrong


def test_mllp_over_tls_is_delivered(listen: Callable[..., MllpListener], tmp_path: Path) -> None:
    server, ours, _ = _tls_server_context(tmp_path)
    listener = listen(ack("AA"), server)
    send_hl7(_message(), _dest(listener.port, tls=ours))
    assert listener.received == [_message()]


def test_mllp_to_an_untrusted_server_is_permanent_and_sends_nothing(
    listen: Callable[..., MllpListener], tmp_path: Path
) -> None:
    server, _, wrong = _tls_server_context(tmp_path)
    listener = listen(ack("AA"), server)
    with pytest.raises(SendError, match="certificate not trusted") as caught:
        send_hl7(_message(), _dest(listener.port, tls=wrong))
    assert not caught.value.retryable
    assert listener.received == []
