"""The ring pages, as Mimir serves them: /ingester/ring, /distributor/ring, /store-gateway/ring,
/compactor/ring, /query-scheduler/ring, /ruler/ring and /multitenant_alertmanager/ring list a ring's members from the ring reader (net/ring.py): id, zone, state
(UNHEALTHY once the heartbeat is older than the ring's timeout), address, registration and last
heartbeat with its age, token count and ownership of the token space; `?tokens=true` lists the
tokens. `Accept: application/json` gives the same as {"shards": [...], "now": ...}. Mimir's Forget
button POSTs the form `forget=<id>`: the instance is removed from the ring in its KV store and the
answer is 302 back to the page (a member still alive registers again at its next heartbeat, as in
dskit). `RingHandlers(ring, name)` only renders; the reader answers from memory, so a page never
waits for etcd, only a Forget does."""
import html
import time
from datetime import datetime, timezone
from typing import Any

from urdar.components import errors as E
from urdar.handlers.errors import json_response
from urdar.handlers.routes import route
from urdar.net.ring import REPORTING, Ring, forget

# ring name -> (page path, title)
PAGES = {"ingester": ("/ingester/ring", "Ingester"),
         "distributor": ("/distributor/ring", "Distributor"),
         "store-gateway": ("/store-gateway/ring", "Store-gateway"),
         "compactor": ("/compactor/ring", "Compactor"),
         "query-scheduler": ("/query-scheduler/ring", "Query-scheduler"),
         "ruler": ("/ruler/ring", "Ruler"),
         "alertmanager": ("/multitenant_alertmanager/ring", "Alertmanager")}


def _utc(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RingHandlers:
    def __init__(self, ring: Ring, name: str) -> None:
        self.ring = ring
        self.name = name
        self.path, self.title = PAGES[name]
        self.ROUTES = (route(self.path, ("GET", "POST"), "page"),)

    def page(self, request: Any) -> Any:
        if request.method == b"POST":
            return self._forget(request)
        rows = self.rows()
        now = self.ring.clock.seconds()
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        if "application/json" in accept:
            return json_response(request, 200, {"shards": [dict(
                r, timestamp=_rfc3339(r["timestamp"]),
                registered_timestamp=_rfc3339(r["registered_timestamp"])) for r in rows],
                "now": _rfc3339(now)})
        show_tokens = request.args.get(b"tokens", [b""])[0] == b"true"
        body = self.render_html(rows, now, show_tokens).encode("utf-8")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def rows(self) -> list[dict[str, Any]]:
        """One dict per member, by zone then id."""
        now = self.ring.clock.seconds()
        owned = self.ring.ownership()
        out = []
        for inst in self.ring.instances():
            healthy = inst.healthy(REPORTING, self.ring.heartbeat_timeout_s, now)
            out.append({"id": inst.id, "state": inst.state if healthy else "UNHEALTHY",
                        "address": inst.addr, "timestamp": inst.timestamp,
                        "registered_timestamp": inst.registered_timestamp, "zone": inst.zone,
                        "tokens": list(inst.tokens), "num_tokens": len(inst.tokens),
                        "ownership": round(100.0 * owned.get(inst.id, 0.0), 2)})
        return out

    def render_html(self, rows: list[dict[str, Any]], now: float, show_tokens: bool) -> str:
        esc = html.escape
        trs = []
        for r in rows:
            trs.append(
                "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s (%ds ago)</td>"
                "<td>%d</td><td>%.2f%%</td><td><button name=\"forget\" value=\"%s\" "
                "type=\"submit\">Forget</button></td></tr>" % (
                    esc(r["id"]), esc(r["zone"]), esc(r["state"]), esc(r["address"]),
                    _utc(r["registered_timestamp"]), _utc(r["timestamp"]),
                    max(0, int(now - r["timestamp"])), r["num_tokens"], r["ownership"],
                    esc(r["id"], quote=True)))
            if show_tokens:
                trs.append("<tr><td colspan=9>Tokens: %s</td></tr>" % " ".join(
                    str(t) for t in r["tokens"]))
        seen = ("never (its KV store has not answered yet)" if self.ring.updated_s is None
                else _utc(self.ring.updated_s))
        return (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>%s Ring</title></head>"
            "<body><h1>%s Ring</h1><p>Current time: %s. Ring key <code>%s</code>, replication "
            "factor %d, heartbeat timeout %gs; last descriptor received %s.</p>"
            "<form action=\"%s\" method=\"POST\"><table border=1><thead><tr><th>Instance ID</th>"
            "<th>Availability Zone</th><th>State</th><th>Address</th><th>Registered At</th>"
            "<th>Last Heartbeat</th><th>Tokens</th><th>Ownership</th><th>Actions</th></tr></thead>"
            "<tbody>%s</tbody></table></form><p><a href=\"?tokens=%s\">%s tokens</a></p>"
            "</body></html>" % (
                esc(self.title), esc(self.title), _utc(now), esc(self.ring.key),
                self.ring.replication_factor, self.ring.heartbeat_timeout_s, seen, esc(self.path),
                "".join(trs) or "<tr><td colspan=9>no members</td></tr>",
                "false" if show_tokens else "true", "Hide" if show_tokens else "Show"))

    def _forget(self, request: Any) -> Any:
        iid = request.args.get(b"forget", [b""])[0].decode("utf-8", "replace")
        if not iid:
            raise E.ComponentError(E.BAD_DATA, "missing form value forget=<instance id>")

        def done(_: bool) -> bytes:
            # Post/Redirect/Get, as dskit: a relative Location keeps the page's query.
            request.setResponseCode(302)
            request.setHeader(b"Location", b"#")
            return b""

        def failed(f: Any) -> None:
            raise E.ComponentError(E.INTERNAL, "error forgetting instance '%s': %s"
                                   % (iid, f.getErrorMessage()))
        return forget(self.ring.kv, self.ring.key, iid).addCallbacks(done, failed)
