"""relaycore/protocol.py on the wire: every message round-trips through msgpack under its
"type" tag, the unions tell their members apart, docs/PROTOCOL.md names every message and
field, and the supervisor's sockets answer garbage without falling over. Last, the one
text form of an ErrorRecord (render.error_line) and how records merge."""

from __future__ import annotations

import inspect
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from relaycore import protocol, rundir
from relaycore.errors import StartupError
from relaycore.render import error_line, stats
from relaycore.reporting import merge_records
from relaycore.supervisor.control import ControlPlane
from relaycore.supervisor.metrics import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

RECORD = protocol.ErrorRecord(
    connector="acme",
    cause="connect_refused",
    upstream="10.0.0.5:443",
    reason="Connection refused",
    count=37,
    first=1700000000.0,
    last=1700000001.5,
    client="192.0.2.7:40112",
    worker=1,
    generation=2,
)
WORKER = protocol.WorkerStatus(
    slot=1,
    generation=2,
    pid=4242,
    started=1700000000.0,
    active=3,
    reports_dropped=1,
    draining=False,
)
CONNECTOR = protocol.ConnectorStats(
    name="acme",
    active=3,
    opened=100,
    closed=97,
    opened_per_s=2.5,
    bytes_in=1000,
    bytes_out=2000,
    handshakes=100,
    handshakes_resumed=60,
    errors={"connect_refused": 37},
    alpn={"x-amzn-mqtt-ca": 100},
)
STATS = protocol.StatsReport(
    time=1700000002.0, generation=2, connectors=[CONNECTOR], workers=[WORKER]
)

# One of each Struct in protocol.py (the test below fails when one is missing here).
SAMPLES: list[msgspec.Struct] = [
    protocol.WorkerHello(slot=0, generation=1, pid=10),
    protocol.CounterReport(
        slot=0,
        generation=1,
        pid=10,
        time=1700000000.0,
        connectors={"acme": {"accepted": 5, "active": 1}},
        worker={"pipes_open": 2},
        reports_dropped=0,
    ),
    RECORD,
    protocol.ErrorBatch(slot=0, generation=1, pid=10, records=[RECORD]),
    protocol.UpstreamCert(
        pin="sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        not_after=1800000000.0,
        issuer="CN=Test CA",
        subject="CN=api.example.com",
        seen=1700000000.0,
    ),
    protocol.WorkerDraining(slot=0, generation=1, pid=10),
    protocol.WorkerBye(slot=0, generation=1, pid=10),
    protocol.SetLogLevel(level="debug"),
    protocol.UpstreamAddresses(generation=2, route=0, addresses=[("10.0.0.7", 443)]),
    CONNECTOR,
    WORKER,
    STATS,
    protocol.StatusRequest(),
    protocol.StatsRequest(),
    protocol.LogsRequest(connector="acme", limit=5),
    protocol.ReloadRequest(),
    protocol.LogLevelRequest(level="info"),
    protocol.StatusReply(
        pid=1,
        started=1700000000.0,
        config_path="/etc/relaycore/relay.toml",
        generation=2,
        splice="auto",
        ktls="available",
        workers=[WORKER],
    ),
    protocol.LogsReply(records=[RECORD]),
    protocol.ReloadReply(ok=False, generation=2, error="relay.workers: expected an integer"),
    protocol.OkReply(),
    protocol.ErrorReply(message="bad request"),
]

UNIONS = {
    "WorkerMessage": protocol.WorkerMessage,
    "ControlMessage": protocol.ControlMessage,
    "AdminRequest": protocol.AdminRequest,
    "AdminReply": protocol.AdminReply,
}


def structs() -> list[type[msgspec.Struct]]:
    """Every Struct protocol.py defines, once (ControlMessage is SetLogLevel's alias)."""
    found = {
        cls
        for _, cls in inspect.getmembers(protocol, inspect.isclass)
        if issubclass(cls, msgspec.Struct)
        and cls.__module__ == protocol.__name__
        and not cls.__name__.startswith("_")
    }
    return sorted(found, key=lambda cls: cls.__name__)


def tag_of(cls: type[msgspec.Struct]) -> str | None:
    tag = cls.__struct_config__.tag
    return tag if isinstance(tag, str) else None


def members(union: object) -> tuple[type[msgspec.Struct], ...]:
    return getattr(union, "__args__", (union,))


def test_every_struct_has_a_sample() -> None:
    assert {type(s) for s in SAMPLES} == set(structs())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_msgpack_under_its_tag(message: msgspec.Struct) -> None:
    cls = type(message)
    wire = msgspec.msgpack.encode(message)
    assert msgspec.msgpack.decode(wire, type=cls) == message
    plain = msgspec.msgpack.decode(wire)  # what a subscriber without relaycore sees
    assert isinstance(plain, dict)
    tag = tag_of(cls)
    if tag is None:
        assert "type" not in plain
        assert set(plain) == set(cls.__struct_fields__)
    else:
        assert plain["type"] == tag
        assert set(plain) == {"type", *cls.__struct_fields__}
    for name, union in UNIONS.items():
        if cls in members(union):
            assert msgspec.msgpack.decode(wire, type=union) == message, name


def test_tags_are_unique_and_unions_hold_tagged_messages_only() -> None:
    tags = [tag_of(cls) for cls in structs() if tag_of(cls) is not None]
    assert len(tags) == len(set(tags))
    for name, union in UNIONS.items():
        for cls in members(union):
            assert tag_of(cls) is not None, (name, cls)
    # The stats socket carries a StatsReport; it is also an admin reply.
    assert protocol.StatsReport in members(protocol.AdminReply)


@pytest.mark.parametrize("name", list(UNIONS))
def test_a_message_of_another_union_or_no_tag_is_rejected(name: str) -> None:
    union = UNIONS[name]
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"type": "frobnicate"}), type=union)
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"slot": 1}), type=union)
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(b"\xc1", type=union)


def test_decoding_ignores_fields_a_newer_sender_adds() -> None:
    plain = msgspec.to_builtins(protocol.WorkerHello(slot=0, generation=1, pid=10))
    plain["future"] = [1, 2]
    wire = msgspec.msgpack.encode(plain)
    assert msgspec.msgpack.decode(wire, type=protocol.WorkerMessage) == protocol.WorkerHello(
        slot=0, generation=1, pid=10
    )


# -- docs/PROTOCOL.md ---------------------------------------------------------------------


def test_protocol_doc_names_every_socket_topic_message_and_field() -> None:
    doc = DOC.read_text()
    code = set(re.findall(r"`([^`]+)`", doc))
    for socket_file in (
        protocol.EVENTS_SOCKET,
        protocol.CONTROL_SOCKET,
        protocol.STATS_SOCKET,
        protocol.ADMIN_SOCKET,
    ):
        assert socket_file in doc
    for topic in (protocol.TOPIC_STATS, protocol.TOPIC_LOG):
        assert f'b"{topic.decode()}"' in doc
    for cls in structs():
        assert cls.__name__ in doc, cls.__name__
        if (tag := tag_of(cls)) is not None:
            assert f'"{tag}"' in doc, (cls.__name__, tag)
        for field in cls.__struct_fields__:
            assert field in code, (cls.__name__, field)


# -- the supervisor's sockets ---------------------------------------------------------------


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    p = ControlPlane(str(run_dir), None)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield c
    finally:
        c.destroy(linger=0)


def ask(plane: ControlPlane, req: zmq.Socket[bytes], raw: bytes) -> protocol.AdminRequest | None:
    """Send raw on the admin socket; what the plane made of it."""
    req.send(raw)
    assert plane.admin.poll(5000), "the request never arrived"
    return plane.admin_request()


def test_a_malformed_admin_request_gets_an_error_reply(
    plane: ControlPlane, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    req = ctx.socket(zmq.REQ)
    req.connect(f"ipc://{plane.run_dir}/{protocol.ADMIN_SOCKET}")
    for raw in (
        b"\xc1",  # not msgpack
        msgspec.msgpack.encode({"type": "frobnicate"}),  # no such request
        msgspec.msgpack.encode({"type": "logs", "limit": "ten"}),  # a field of the wrong type
        msgspec.msgpack.encode(protocol.WorkerHello(slot=0, generation=1, pid=1)),
    ):
        assert ask(plane, req, raw) is None, raw
        assert req.poll(5000), f"no reply to {raw!r}"
        reply = msgspec.msgpack.decode(req.recv(), type=protocol.AdminReply)
        assert isinstance(reply, protocol.ErrorReply), raw
        assert reply.message.startswith("bad request: "), reply

    # The socket still works for a good one (REQ/REP: one reply per request).
    request = ask(plane, req, msgspec.msgpack.encode(protocol.LogsRequest(connector="acme")))
    assert request == protocol.LogsRequest(connector="acme", limit=100)
    plane.reply(protocol.OkReply())
    assert req.poll(5000)
    assert msgspec.msgpack.decode(req.recv(), type=protocol.AdminReply) == protocol.OkReply()
    req.close()


def test_worker_messages_skip_what_is_not_a_worker_message(
    plane: ControlPlane, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{plane.run_dir}/{protocol.EVENTS_SOCKET}")
    hello = protocol.WorkerHello(slot=0, generation=1, pid=10)
    bye = protocol.WorkerBye(slot=0, generation=1, pid=10)
    push.send(b"\xc1")
    push.send(msgspec.msgpack.encode(protocol.StatusRequest()))
    push.send(msgspec.msgpack.encode(hello))
    push.send(b"")
    push.send(msgspec.msgpack.encode(bye))
    got: list[protocol.WorkerMessage] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        if plane.events.poll(100):
            got += plane.worker_messages()
    assert got == [hello, bye]
    push.close()


def test_a_second_relaycore_on_the_same_run_dir_is_refused(plane: ControlPlane) -> None:
    # The supervisor claims run_dir (relaycore.rundir) before it binds the sockets; a
    # second claim is refused before it could take them over.
    lock = rundir.claim(plane.run_dir)
    try:
        with pytest.raises(StartupError) as info:
            rundir.claim(plane.run_dir)
    finally:
        os.close(lock)
    assert str(info.value) == (
        f"another relaycore (pid {os.getpid()}) is running with run_dir {plane.run_dir}"
    )
    # ... and the first one's sockets are still its own.
    for name in (protocol.EVENTS_SOCKET, protocol.ADMIN_SOCKET):
        assert os.path.exists(os.path.join(plane.run_dir, name))


# -- an ErrorRecord's one text form, and how records merge on their way ----------------------


def test_error_line_names_everything_a_record_holds() -> None:
    assert error_line(RECORD) == (
        "connector acme: connect_refused: upstream 10.0.0.5:443: Connection refused"
        " (x37, last client 192.0.2.7:40112, worker 1 g2)"
    )


def test_error_line_of_a_gateway_record_says_where_the_device_meant_to_go() -> None:
    record = msgspec.structs.replace(
        RECORD,
        connector="(gateway)",
        cause="no_route",
        upstream="198.51.100.7:80",
        reason="no connector or passthrough rule matches the original destination",
        count=1,
        destination="198.51.100.7:80",
    )
    assert error_line(record) == (
        "connector (gateway): no_route: upstream 198.51.100.7:80: no connector or passthrough"
        " rule matches the original destination (x1, last client 192.0.2.7:40112, meant for"
        " 198.51.100.7:80, worker 1 g2)"
    )


def test_relaycore_logs_dates_the_same_line_by_the_latest_failure() -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(RECORD.last))
    assert error_line(RECORD, dated=True) == f"{when} {error_line(RECORD)}"


def test_records_merge_by_connector_cause_and_upstream_and_the_latest_speaks() -> None:
    def failure(at: float, client: str, upstream: str = "10.0.0.5:443") -> protocol.ErrorRecord:
        return msgspec.structs.replace(
            RECORD, count=1, first=at, last=at, client=client, upstream=upstream
        )

    merged = merge_records(
        {},
        [
            failure(3.0, "192.0.2.1:1"),
            failure(1.0, "192.0.2.2:2"),
            failure(2.0, "192.0.2.3:3", upstream="10.0.0.6:443"),
        ],
    )
    assert list(merged) == [
        ("acme", "connect_refused", "10.0.0.5:443"),
        ("acme", "connect_refused", "10.0.0.6:443"),
    ]
    first = merged["acme", "connect_refused", "10.0.0.5:443"]
    assert (first.count, first.first, first.last, first.client) == (2, 1.0, 3.0, "192.0.2.1:1")


def test_the_agreed_alpn_protocols_show_in_stats_and_metrics() -> None:
    assert "alpn: x-amzn-mqtt-ca 100" in stats(STATS)
    metric = 'relaycore_tls_alpn_total{connector="acme",protocol="x-amzn-mqtt-ca"} 100'
    assert metric in render(STATS, 0)
