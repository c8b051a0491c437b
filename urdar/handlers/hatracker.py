"""GET /distributor/ha_tracker, as Mimir serves it: one row per (tenant, cluster) the HA tracker
follows (components/hatracker.py) with the elected replica, when it was elected, when it was last
heard from, and how long until its timestamp is refreshed in the KV store and until another
replica may take over (negative once past). `Accept: application/json` gives the same as
{"elected": [...], "now": ...}. Rendered from the tracker's local copy: the page never waits for
the KV store."""
import html
from datetime import datetime, timezone
from typing import Any

from urdar.components.errors import go_duration
from urdar.components.hatracker import HATracker
from urdar.handlers.errors import json_response
from urdar.handlers.routes import route


def _time(ms: int) -> str:
    """Go's time.Time String() form in UTC (what Mimir's page shows), millisecond precision."""
    if not ms:
        return ""
    t = datetime.fromtimestamp(ms / 1000.0, timezone.utc)
    frac = ("%03d" % (ms % 1000)).rstrip("0")
    return t.strftime("%Y-%m-%d %H:%M:%S") + ("." + frac if frac else "") + " +0000 UTC"


class HATrackerHandlers:
    ROUTES = (route("/distributor/ha_tracker", ("GET",), "page"),)

    def __init__(self, tracker: HATracker) -> None:
        self.tracker = tracker

    def rows(self) -> list[dict[str, Any]]:
        cfg = self.tracker.config
        now_ms = int(self.tracker.clock.seconds() * 1000)
        return [{"userID": tenant, "cluster": cluster, "replica": e.replica,
                 "lastElectionTime": e.elected_at, "electedAt": e.received_at,
                 "updateDuration": e.received_at + cfg.update_timeout_ms - now_ms,
                 "failoverDuration": e.received_at + cfg.failover_timeout_ms - now_ms}
                for tenant, cluster, e in self.tracker.elected()]

    def page(self, request: Any) -> Any:
        rows = self.rows()
        now_ms = int(self.tracker.clock.seconds() * 1000)
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        if "application/json" in accept:
            return json_response(request, 200, {"elected": rows, "now": _time(now_ms)})
        body = self.render_html(rows, now_ms).encode("utf-8")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    @staticmethod
    def render_html(rows: list[dict[str, Any]], now_ms: int) -> str:
        e = html.escape
        out = ['<!DOCTYPE html>\n<html>\n<head>\n    <meta charset="UTF-8">\n'
               '    <title>HA Tracker Status</title>\n</head>\n<body>\n<h1>HA Tracker Status</h1>\n'
               '<p>Current time: %s</p>\n<table width="100%%" border="1">\n    <thead>\n    <tr>\n'
               '        <th>User ID</th>\n        <th>Cluster</th>\n        <th>Replica</th>\n'
               '        <th>Last Election</th>\n        <th>Elected Last Seen Time</th>\n'
               '        <th>Time Until Update</th>\n        <th>Time Until Failover</th>\n'
               '    </tr>\n    </thead>\n    <tbody>\n' % e(_time(now_ms))]
        for r in rows:
            out.append("        <tr>\n" + "".join("            <td>%s</td>\n" % e(v) for v in (
                r["userID"], r["cluster"], r["replica"], _time(r["lastElectionTime"]),
                _time(r["electedAt"]), go_duration(r["updateDuration"]),
                go_duration(r["failoverDuration"]))) + "        </tr>\n")
        out.append("    </tbody>\n</table>\n</body>\n</html>")
        return "".join(out)
