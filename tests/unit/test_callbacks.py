"""Callback destinations (which addresses are refused) and Standard Webhooks signing."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from standardwebhooks import Webhook

from src.core.config import Settings
from src.jobs import callbacks, destinations
from src.jobs.destinations import Refused, Unresolvable, vet, why_not
from src.jobs.model import CallbackStatus, JobStatus
from src.jobs.records import new_job_doc

# The Standard Webhooks test vector (the spec's reference libraries all reproduce it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fec0::1", "private"),  # deprecated site-local
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "shared"),
        ("192.0.2.1", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    found = why_not(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",  # mapped public IPv4 (Python calls ::/8 reserved)
        "64:ff9b::808:808",  # NAT64 of a public address
        "2002:808:808::",  # 6to4 of a public address
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert why_not(ipaddress.ip_address(address)) is None


def resolving(monkeypatch: pytest.MonkeyPatch, **names: list[str]) -> list[str]:
    """Make getaddrinfo answer `names` (dots as underscores) and addresses as themselves;
    returns the names it was asked."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        try:  # an address (the one a connection is pinned to) is no name to look up
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (host, port))]
        asked.append(host)
        key = host.replace(".", "_")
        if key not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in names[key]
        ]

    monkeypatch.setattr(destinations.socket, "getaddrinfo", getaddrinfo)
    return asked


def test_one_private_address_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, hooks_example=["93.184.215.14", "10.0.0.7"])
    with pytest.raises(Refused, match=r"hooks\.example resolves to 10\.0\.0\.7, a private"):
        vet("https://hooks.example/cb", allow_private=False)
    host, port, addresses = vet("https://hooks.example/cb", allow_private=True)
    assert (host, port) == ("hooks.example", 443)
    assert [str(a) for a in addresses] == ["93.184.215.14", "10.0.0.7"]


def test_a_literal_address_is_named_as_such() -> None:
    with pytest.raises(Refused) as refused:
        vet("http://127.0.0.1:9/hook", allow_private=False)
    message = str(refused.value)
    assert message.startswith("127.0.0.1 is a loopback address;")
    assert "CALLBACK_ALLOW_PRIVATE=true" in message
    # Obfuscated spellings resolve to the same address, and are refused the same way.
    with pytest.raises(Refused, match="loopback"):
        vet("http://2130706433/hook", allow_private=False)
    with pytest.raises(Refused, match="loopback"):
        vet("http://[::ffff:7f00:1]/hook", allow_private=False)


def test_unresolvable_hosts_and_bad_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch)
    with pytest.raises(Unresolvable, match=r"nowhere\.example does not resolve"):
        vet("http://nowhere.example/", allow_private=True)
    with pytest.raises(Unresolvable) as long_name:  # a message never echoes kilobytes
        vet(f"http://{'a' * 5000}.example/", allow_private=True)
    assert len(str(long_name.value)) < 300
    with pytest.raises(Refused, match="http"):
        vet("ftp://93.184.215.14/", allow_private=False)
    with pytest.raises(Refused, match="not a valid URL"):
        vet("http://93.184.215.14:99999/", allow_private=False)


def test_signature_matches_the_spec_test_vector() -> None:
    headers = callbacks.webhook_headers(VECTOR_SECRET, VECTOR_ID, VECTOR_BODY, VECTOR_TIMESTAMP)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_without_a_secret_no_signature() -> None:
    headers = callbacks.webhook_headers("", "job_x_succeeded", "{}", 1)
    assert headers == {"webhook-id": "job_x_succeeded", "webhook-timestamp": "1"}


def test_webhook_id_is_per_job_and_status() -> None:
    first = callbacks.webhook_id("019ac5f0a3b2c4d5e6f7a8", "succeeded")
    assert first == callbacks.webhook_id("019ac5f0a3b2c4d5e6f7a8", "succeeded")
    assert first != callbacks.webhook_id("019ac5f0a3b2c4d5e6f7a8", "failed")
    assert "." not in first  # the spec: no '.' in what is signed before the body


def test_the_secret_must_be_whsec_base64() -> None:
    assert Settings(callback_secret=VECTOR_SECRET).callback_secret == VECTOR_SECRET  # type: ignore[call-arg]
    for bad in ("a password", "whsec_short", VECTOR_SECRET.removeprefix("whsec_")):
        with pytest.raises(ValueError, match="callback_secret"):
            Settings(callback_secret=bad)  # type: ignore[call-arg]


class _Receiver(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.seen.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    _Receiver.seen.clear()
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


class _Store:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.doc if job_id == self.doc["_id"] else None

    def set_fields(self, job_id: str, **fields: Any) -> None:
        self.doc.update(fields)


def test_delivery_connects_to_the_vetted_address_and_keeps_the_name(
    monkeypatch: pytest.MonkeyPatch, receiver: HTTPServer
) -> None:
    """The name is resolved once, by the vetting; the request goes to that address with
    `Host: <name>`, signed so that the reference verifier accepts it."""
    asked = resolving(monkeypatch, hooks_example=["127.0.0.1"])
    port = receiver.server_port
    doc: dict[str, Any] = dict(
        new_job_doc(
            job_id="019ac5f0a3b2c4d5e6f7a8",
            input_relpath="jobs/x/input.csv",
            input_name="x.csv",
            options={},
            output_format="csv",
            retention_hours=1,
            callback_url=f"http://hooks.example:{port}/hook",
        )
    )
    doc["status"] = JobStatus.SUCCEEDED
    settings = Settings(callback_secret=VECTOR_SECRET, callback_allow_private=True)  # type: ignore[call-arg]
    store = _Store(doc)

    assert callbacks.deliver_callback(store, settings, doc["_id"])  # type: ignore[arg-type]

    assert asked == ["hooks.example"]  # never resolved again to connect
    assert doc["callback_status"] == CallbackStatus.DELIVERED
    [(headers, body)] = _Receiver.seen
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["host"] == f"hooks.example:{port}"
    assert headers["webhook-id"] == "job_019ac5f0a3b2c4d5e6f7a8_succeeded"
    job = Webhook(VECTOR_SECRET).verify(body, headers)
    assert job["id"] == doc["_id"] and job["status"] == "succeeded"
