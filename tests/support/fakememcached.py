"""An in-memory memcached server speaking the text protocol (get/gets, set, stats), wired to
MemcachedClient through Twisted's iosim pumps: no sockets, no reactor. `FakeMemcached.connect` is
the client's `connect` seam; the test moves bytes with `flush()` and can make the server stall
(reads arrive, nothing answers), refuse connections, or drop them."""
from twisted.internet import defer
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim


class _ServerProtocol(LineReceiver):
    delimiter = b"\r\n"

    def __init__(self, server):
        self.server = server
        self._set = None     # (key, length) while a set's data block is awaited

    def lineReceived(self, line):
        if self.server.stalled:
            self.server.unanswered.append(line)
            return
        parts = line.split()
        if not parts:
            return
        cmd = parts[0]
        s = self.server
        if cmd in (b"get", b"gets"):
            for key in parts[1:]:
                s.cmd_get += 1
                if key in s.items:
                    s.get_hits += 1
                    v = s.items[key]
                    self.transport.write(b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(v), v))
                else:
                    s.get_misses += 1
            self.transport.write(b"END\r\n")
        elif cmd == b"set":
            key, _flags, _ttl, length = parts[1:5]
            self._set = (key, int(length))
            self.setRawMode()
        elif cmd == b"stats":
            for k, v in (("get_hits", s.get_hits), ("get_misses", s.get_misses),
                         ("cmd_get", s.cmd_get), ("cmd_set", s.cmd_set),
                         ("curr_items", len(s.items))):
                self.transport.write(b"STAT %s %d\r\n" % (k.encode(), v))
            self.transport.write(b"END\r\n")
        else:
            self.transport.write(b"ERROR\r\n")

    def rawDataReceived(self, data):
        self._buf = getattr(self, "_buf", b"") + data
        key, length = self._set
        if len(self._buf) < length + 2:
            return
        value, rest = self._buf[:length], self._buf[length + 2:]
        self._buf = b""
        self._set = None
        s = self.server
        s.cmd_set += 1
        if len(value) > s.max_item_size:
            self.transport.write(b"SERVER_ERROR object too large for cache\r\n")
        else:
            s.items[key] = value
            self.transport.write(b"STORED\r\n")
        self.setLineMode(rest)


class FakeMemcached:
    """One fake server. `connect` hands the client a connected protocol (or a refusal)."""

    def __init__(self, max_item_size=1 << 20, autoflush=False):
        self.items = {}
        # autoflush: every request is answered before the client call returns (for tests that read
        # results with successResultOf right away); a stalled server still answers nothing.
        self.autoflush = autoflush
        self.max_item_size = max_item_size
        self.get_hits = self.get_misses = self.cmd_get = self.cmd_set = 0
        self.stalled = False
        self.refuse = False
        self.unanswered = []
        self.connections = 0
        self.pumps = []

    def connect(self, host, port, factory):
        if self.refuse:
            return defer.fail(ConnectionRefusedError("fake memcached %s:%d refuses" % (host, port)))
        self.connections += 1
        client = factory.buildProtocol(None)
        server = _ServerProtocol(self)
        pump = iosim.connect(server, iosim.makeFakeServer(server),
                             client, iosim.makeFakeClient(client), greet=True)
        self.pumps.append(pump)
        if self.autoflush:
            for name in ("getMultiple", "set", "stats"):
                setattr(client, name, self._flushing(getattr(client, name)))
        return defer.succeed(client)

    def _flushing(self, method):
        def call(*args, **kwargs):
            d = method(*args, **kwargs)
            self.flush()
            return d
        return call

    def flush(self):
        """Deliver every byte in flight both ways (repeatedly, until quiet)."""
        for _ in range(3):
            for p in list(self.pumps):
                p.flush(advanceClock=False)

    def drop_connections(self):
        """The server closes every connection (as on a restart)."""
        for p in self.pumps:
            p.server.transport.loseConnection()
        self.flush()
        self.pumps = []


class FakeMemcachedCluster:
    """Several fake servers addressed as "fake-<i>:11211"; one connect seam for all."""

    def __init__(self, n):
        self.servers = [FakeMemcached() for _ in range(n)]
        self.addresses = ["fake-%d:11211" % i for i in range(n)]

    def connect(self, host, port, factory):
        return self.servers[int(host.split("-")[1])].connect(host, port, factory)

    def flush(self):
        for s in self.servers:
            s.flush()
