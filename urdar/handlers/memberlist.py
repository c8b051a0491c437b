"""GET /memberlist: the in-process KV store (net/kv.py) and this process as the only cluster member.

Until urdar runs as a cluster, the page shows what memberlist would: the KV store's keys (with
version, last change and a link to each value as JSON, `?viewKey=<key>&format=json`, as Mimir's
page has), every ring's members with address, state and heartbeat time, and the one member of the
cluster, this process. `MemberlistHandlers(kv, lifecyclers, clock, name, addr)` only renders."""
import html
import json
import time
import urllib.parse

from urdar.components import errors as E
from urdar.handlers.routes import route


def _when(ts):
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class MemberlistHandlers:
    ROUTES = (route("/memberlist", ("GET",), "memberlist"),)

    def __init__(self, kv, lifecyclers, clock, name, addr):
        self.kv = kv
        self.lifecyclers = lifecyclers
        self.clock = clock
        self.name = name
        self.addr = addr

    def memberlist(self, request):
        key = request.args.get(b"viewKey", [b""])[0].decode("utf-8", "replace")
        if key:
            entry = self.kv.entry(key)
            if entry is None:
                raise E.ComponentError(E.NOT_FOUND, "no such key in the KV store: %r" % key)
            pretty = request.args.get(b"format", [b"json"])[0] == b"json-pretty"
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(entry[0], indent=2 if pretty else None, sort_keys=True).encode()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self.page().encode()

    def page(self):
        now = self.clock.seconds()
        beats = [lc.last_heartbeat_s for lc in self.lifecyclers if lc.last_heartbeat_s is not None]
        last = max(beats) if beats else None
        esc = html.escape
        keys = []
        rings = []
        for key in self.kv.keys():
            value, version, updated = self.kv.entry(key)
            link = "/memberlist?" + urllib.parse.urlencode({"viewKey": key, "format": "json-pretty"})
            keys.append("<tr><td>%s</td><td>%d</td><td>%s</td><td><a href=\"%s\">json</a></td></tr>" % (
                esc(key), version, _when(updated), esc(link)))
            members = value.get("ingesters", {}) if isinstance(value, dict) else {}
            rows = "".join(
                "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s (%.0fs ago)</td><td>%s</td><td>%d</td></tr>" % (
                    esc(mid), esc(str(m.get("addr", ""))), esc(str(m.get("state", ""))),
                    _when(m.get("timestamp")), max(0.0, now - m.get("timestamp", now)),
                    _when(m.get("registered_timestamp")), len(m.get("tokens", ())))
                for mid, m in sorted(members.items()))
            rings.append("<h3>%s</h3><table border=1><tr><th>Instance</th><th>Address</th><th>State</th>"
                          "<th>Heartbeat</th><th>Registered</th><th>Tokens</th></tr>%s</table>" % (
                              esc(key), rows or "<tr><td colspan=6>no members</td></tr>"))
        return (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Memberlist Status</title></head>"
            "<body><h1>Memberlist Status</h1>"
            "<p>urdar runs as one process: its KV store is in memory and this process is the only "
            "member of the cluster.</p>"
            "<h2>KV Store</h2><table border=1><tr><th>Key</th><th>Version</th><th>Last change</th>"
            "<th>Value</th></tr>%s</table>"
            "<h2>Rings</h2>%s"
            "<h2>Memberlist Cluster Members</h2><table border=1><tr><th>Name</th><th>Address</th>"
            "<th>State</th><th>Last heartbeat</th></tr>"
            "<tr><td>%s</td><td>%s</td><td>Alive</td><td>%s</td></tr></table>"
            "</body></html>" % (
                "".join(keys) or "<tr><td colspan=4>no keys</td></tr>", "".join(rings),
                esc(self.name), esc(self.addr), _when(last)))
