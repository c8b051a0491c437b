"""GET /memberlist: the contents of the KV stores the rings live in, and this process.

Mimir's memberlist gossip is out of scope: rings live in one in-memory store shared by the process
(-<ring>.store=inmemory) or in etcd (-<ring>.store=etcd), and the page says so. It shows each
store's keys (with version, last change and a link to each value as JSON, `?viewKey=<key>&format=json`,
as Mimir's page has), every ring's members with address, state, heartbeat and tokens, and this
process as the one member memberlist would list. `MemberlistHandlers(stores, lifecyclers, clock,
name, addr)` takes (label, KV store) pairs; it reads them through Deferreds, so an etcd store that
is slow or down delays only this page (its client answers from the last values it saw), never the
reactor."""
import html
import json
import time
import urllib.parse

from twisted.internet import defer

from urdar.components import errors as E
from urdar.handlers.routes import route


MAX_KEYS = 1000        # keys (and values) one page reads from one store


def _when(ts):
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class MemberlistHandlers:
    ROUTES = (route("/memberlist", ("GET",), "memberlist"),)

    def __init__(self, stores, lifecyclers, clock, name, addr):
        self.stores = stores            # [(label, KV store, key prefix)], filled as rings are built
        self.lifecyclers = lifecyclers
        self.clock = clock
        self.name = name
        self.addr = addr

    def memberlist(self, request):
        key = request.args.get(b"viewKey", [b""])[0].decode("utf-8", "replace")
        if key:
            return self.view_key(request, key)
        d = self.page()

        def render(text):
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return text.encode("utf-8")
        return d.addCallback(render)

    @defer.inlineCallbacks
    def view_key(self, request, key):
        for _, kv, prefix in self.stores:
            if not key.startswith(prefix):
                continue
            entry = yield defer.maybeDeferred(kv.entry, key)
            if entry is not None:
                pretty = request.args.get(b"format", [b"json"])[0] == b"json-pretty"
                request.setHeader(b"Content-Type", b"application/json")
                return json.dumps(entry[0], indent=2 if pretty else None, sort_keys=True).encode()
        raise E.ComponentError(E.NOT_FOUND, "no such key in the KV store: %r" % key)

    @defer.inlineCallbacks
    def page(self):
        esc = html.escape
        keys = []
        rings = []
        for label, kv, prefix in list(self.stores):
            try:
                names = yield defer.maybeDeferred(kv.keys, prefix)
                if len(names) > MAX_KEYS:
                    keys.append("<tr><td colspan=5>%s: the first %d of %d keys</td></tr>" % (
                        esc(label), MAX_KEYS, len(names)))
                entries = []
                for key in names[:MAX_KEYS]:
                    entry = yield defer.maybeDeferred(kv.entry, key)
                    if entry is not None:
                        entries.append((key, entry))
            except Exception as exc:
                keys.append("<tr><td colspan=5>%s: unreachable (%s)</td></tr>" % (
                    esc(label), esc(str(exc) or type(exc).__name__)))
                continue
            for key, (value, version, updated) in entries:
                link = "/memberlist?" + urllib.parse.urlencode({"viewKey": key, "format": "json-pretty"})
                keys.append("<tr><td>%s</td><td>%s</td><td>%d</td><td>%s</td><td><a href=\"%s\">json</a>"
                            "</td></tr>" % (esc(key), esc(label), version, _when(updated), esc(link)))
                rings.append(self._ring_table(key, value))
        now = self.clock.seconds()
        beats = [lc.last_heartbeat_s for lc in self.lifecyclers if lc.last_heartbeat_s is not None]
        last = max(beats) if beats else None
        return (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Memberlist Status</title></head>"
            "<body><h1>Memberlist Status</h1>"
            "<p>urdar does not speak Mimir's memberlist gossip protocol: its rings live in an "
            "in-memory KV store shared by this process or in etcd (-&lt;ring&gt;.store). This page "
            "shows those stores; the members of each ring are on its ring page.</p>"
            "<h2>KV Store</h2><table border=1><tr><th>Key</th><th>Store</th><th>Version</th>"
            "<th>Last change</th><th>Value</th></tr>%s</table>"
            "<h2>Rings</h2>%s"
            "<h2>Memberlist Cluster Members</h2><table border=1><tr><th>Name</th><th>Address</th>"
            "<th>State</th><th>Last heartbeat</th></tr>"
            "<tr><td>%s</td><td>%s</td><td>Alive</td><td>%s</td></tr></table>"
            "<p>Rendered at %s.</p></body></html>" % (
                "".join(keys) or "<tr><td colspan=5>no keys</td></tr>", "".join(rings),
                esc(self.name), esc(self.addr), _when(last), _when(now)))

    def _ring_table(self, key, value):
        esc = html.escape
        now = self.clock.seconds()
        members = value.get("ingesters", {}) if isinstance(value, dict) else {}
        rows = "".join(
            "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s (%.0fs ago)</td><td>%s</td><td>%d</td></tr>" % (
                esc(mid), esc(str(m.get("addr", ""))), esc(str(m.get("state", ""))),
                _when(m.get("timestamp")), max(0.0, now - m.get("timestamp", now)),
                _when(m.get("registered_timestamp")), len(m.get("tokens", ())))
            for mid, m in sorted(members.items()))
        return ("<h3>%s</h3><table border=1><tr><th>Instance</th><th>Address</th><th>State</th>"
                "<th>Heartbeat</th><th>Registered</th><th>Tokens</th></tr>%s</table>" % (
                    esc(key), rows or "<tr><td colspan=6>no members</td></tr>"))
