"""Every message on relaycore's ZeroMQ sockets: msgspec Structs, msgpack on the wire.

Four sockets, all `ipc://` in run_dir (mode 0700) unless [stats] publish adds a TCP one
(docs/PROTOCOL.md shows a subscriber in twenty lines of pyzmq and msgspec):

    events   supervisor PULL <- workers PUSH   WorkerMessage
    control  supervisor PUB  -> workers SUB    ControlMessage
    stats    supervisor PUB  -> anyone SUB     [b"stats", StatsReport] / [b"log", ErrorRecord]
    admin    supervisor REP  <- CLI REQ        AdminRequest -> AdminReply

Each union is tagged by the field "type", so a message names itself on the wire.
Counters are cumulative since the worker started: a report that is lost (a full queue
drops it rather than stall the loop) loses nothing the next one does not carry.
"""

import msgspec

EVENTS_SOCKET = "events.sock"
CONTROL_SOCKET = "control.sock"
STATS_SOCKET = "stats.sock"
ADMIN_SOCKET = "admin.sock"

TOPIC_STATS = b"stats"
TOPIC_LOG = b"log"


class _Message(msgspec.Struct, tag_field="type", kw_only=True):
    pass


# -- worker -> supervisor (events) -----------------------------------------------------------


class WorkerHello(_Message, tag="worker_hello"):
    """A worker is accepting."""

    slot: int
    generation: int
    pid: int


class UpstreamCert(msgspec.Struct, kw_only=True, frozen=True):
    """The leaf certificate a connector's upstream presented in its latest handshakes."""

    pin: str  # sha256/<base64> of its DER SubjectPublicKeyInfo, as `pin` takes it
    not_after: float  # Unix time
    issuer: str  # RFC 2253: "CN=R11,O=Let's Encrypt,C=US"
    subject: str
    seen: float  # Unix time of the latest handshake that presented it
    key_changes: int = 0  # in this worker: handshakes with another key than the one before
    previous_pin: str = ""  # the key before the latest change


class CounterReport(_Message, tag="counters"):
    """A worker's counters now. `connectors` maps connector name -> counter -> value
    (names in docs/ERRORS.md); `worker` holds what is the worker's own."""

    slot: int
    generation: int
    pid: int
    time: float
    connectors: dict[str, dict[str, int]]
    worker: dict[str, int]
    reports_dropped: int  # reports this worker could not send (supervisor stalled)
    certs: dict[str, UpstreamCert] = {}  # connector name -> its upstream's certificate


# Causes that are news, not failures: the connection went on (docs/ERRORS.md). Logged at
# INFO, and once per connector and upstream within NOTICE_QUIET_S however many workers
# saw it; counted and kept in the error log like any other record.
NOTICE_CAUSES = frozenset({"pq_classical"})
NOTICE_QUIET_S = 60.0


class ErrorRecord(msgspec.Struct, kw_only=True, frozen=True):
    """Failures of one cause on one connector and upstream, merged: `count` of them
    between `first` and `last` (Unix time), with the last one's reason and device.

    The one shape a failure has from the worker that saw it (one record per error event
    of its loop) through the supervisor's log to `relaycore logs`; relaycore.render's
    error_line is the one way it is written as text."""

    connector: str  # the route's name: a connector, an exit, "(gateway)"...
    cause: str
    upstream: str
    reason: str
    count: int
    first: float
    last: float
    client: str
    destination: str = ""  # gateway mode: the device's original destination
    worker: int
    generation: int

    @property
    def key(self) -> tuple[str, str, str]:
        """What records merge by: (connector, cause, upstream)."""
        return (self.connector, self.cause, self.upstream)

    def merge(self, other: "ErrorRecord") -> "ErrorRecord":
        """Both records as one: the latest failure speaks for it (reason, device,
        worker), the count and the time span cover both."""
        latest = other if other.last >= self.last else self
        return msgspec.structs.replace(
            latest,
            count=self.count + other.count,
            first=min(self.first, other.first),
            last=max(self.last, other.last),
        )


class ErrorBatch(_Message, tag="errors"):
    slot: int
    generation: int
    pid: int
    records: list[ErrorRecord]


class WorkerDraining(_Message, tag="worker_draining"):
    """A worker has closed its listeners: new connections go to other workers."""

    slot: int
    generation: int
    pid: int


class WorkerBye(_Message, tag="worker_bye"):
    """A worker finished draining; its counters are final."""

    slot: int
    generation: int
    pid: int


WorkerMessage = WorkerHello | CounterReport | ErrorBatch | WorkerDraining | WorkerBye


# -- supervisor -> workers (control) ---------------------------------------------------------


class SetLogLevel(_Message, tag="set_log_level"):
    """Workers log from this level on (debug, info, warning, error)."""

    level: str


class UpstreamAddresses(_Message, tag="upstream_addresses"):
    """Route `route` of generation `generation` goes to these (IP literal, port)
    addresses now, in order: its name resolved to them (the supervisor sends every
    name's addresses after each round of lookups, changed or not)."""

    generation: int
    route: int
    addresses: list[tuple[str, int]]


# Draining stays a signal (SIGTERM), which works even when the supervisor's sockets do not.
ControlMessage = SetLogLevel | UpstreamAddresses


# -- supervisor -> subscribers (stats) -------------------------------------------------------


class ConnectorStats(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    active: int
    opened: int  # connections accepted since start (all generations)
    closed: int
    opened_per_s: float  # over the last report interval
    bytes_in: int  # device -> server
    bytes_out: int  # server -> device
    handshakes: int  # full + resumed
    handshakes_resumed: int
    errors: dict[str, int]  # cause -> count since start (causes in docs/ERRORS.md)
    # NOTICE_CAUSES -> count since start: news, not failures (the connection went on)
    notices: dict[str, int] = msgspec.field(default_factory=dict)
    cert: UpstreamCert | None = None  # TLS connectors, once a handshake completed
    # ALPN protocol -> handshakes that agreed on it (connectors and exits with `alpn`)
    alpn: dict[str, int] = msgspec.field(default_factory=dict)
    # key-exchange group -> handshakes since start (relaycore._core.GROUPS; zeros left out)
    groups: dict[str, int] = msgspec.field(default_factory=dict)


class WorkerStatus(msgspec.Struct, kw_only=True, frozen=True):
    slot: int
    generation: int
    pid: int
    started: float  # Unix time
    active: int
    reports_dropped: int
    draining: bool
    # Resident memory (bytes) and the worker's own counters (pipes_open, pipes_exhausted,
    # accept_paused_emfile, accept_paused_limit, events_dropped) as of its last report.
    rss_bytes: int = 0
    counters: dict[str, int] = msgspec.field(default_factory=dict)


class StatsReport(_Message, tag="stats"):
    time: float
    generation: int
    connectors: list[ConnectorStats]
    workers: list[WorkerStatus]


# -- CLI -> supervisor (admin) ---------------------------------------------------------------


class StatusRequest(_Message, tag="status"):
    pass


class StatsRequest(_Message, tag="stats_request"):
    pass


class LogsRequest(_Message, tag="logs"):
    connector: str | None = None
    limit: int = 100


class ReloadRequest(_Message, tag="reload"):
    pass


class LogLevelRequest(_Message, tag="log_level"):
    level: str


AdminRequest = StatusRequest | StatsRequest | LogsRequest | ReloadRequest | LogLevelRequest


class StatusReply(_Message, tag="status_reply"):
    pid: int
    started: float
    config_path: str
    generation: int
    splice: str  # the [relay] splice mode
    ktls: str  # "available" or why not
    workers: list[WorkerStatus]
    certs: dict[str, UpstreamCert] = {}  # connector name -> its upstream's certificate
    openssl: str = ""  # the OpenSSL the workers' relaycore._core runs, and where it came from
    io: str = "epoll"  # the [relay] io mode


class LogsReply(_Message, tag="logs_reply"):
    records: list[ErrorRecord]


class ReloadReply(_Message, tag="reload_reply"):
    ok: bool
    generation: int  # in force after the request
    error: str = ""


class OkReply(_Message, tag="ok"):
    pass


class ErrorReply(_Message, tag="error"):
    message: str


AdminReply = StatusReply | StatsReport | LogsReply | ReloadReply | OkReply | ErrorReply
