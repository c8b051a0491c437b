"""Go's time.Time and time.Duration as templates see them: String(), Format(layout), In(zone)."""
from __future__ import annotations

import datetime
import re
from typing import List, Tuple

UTC = datetime.timezone.utc

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# Go's layout elements, longest first where one is a prefix of another.
_STD = ["January", "Jan", "Monday", "Mon", "MST", "2006", "06", "002", "01", "1", "02", "_2", "2",
        "15", "03", "3", "04", "4", "05", "5", "PM", "pm", "Z07:00:00", "Z070000", "Z07:00",
        "Z0700", "Z07", "-07:00:00", "-070000", "-07:00", "-0700", "-07"]
_STD.sort(key=len, reverse=True)
_FRAC = re.compile(r"[.,](0+|9+)(?![0-9])")


def _layout_tokens(layout: str) -> List[Tuple[bool, str]]:
    out: List[Tuple[bool, str]] = []
    i = 0
    lit = ""
    while i < len(layout):
        m = _FRAC.match(layout, i)
        if m:
            if lit:
                out.append((False, lit))
                lit = ""
            out.append((True, m.group(0)))
            i = m.end()
            continue
        for s in _STD:
            if layout.startswith(s, i):
                # "Jan"/"Mon" must not run into a lower-case letter ("Janet" is literal)
                if s in ("Jan", "Mon") and layout[i + 3:i + 4].islower():
                    continue
                if lit:
                    out.append((False, lit))
                    lit = ""
                out.append((True, s))
                i += len(s)
                break
        else:
            lit += layout[i]
            i += 1
    if lit:
        out.append((False, lit))
    return out


class GoTime:
    """A point in time with a zone; str() is Go's Time.String(), Format takes Go layouts."""

    go_type_name = "time.Time"
    go_stringer = True

    def __init__(self, dt: datetime.datetime, zone_name: str = "UTC") -> None:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        self.dt = dt
        self.zone_name = zone_name

    @classmethod
    def zero(cls) -> "GoTime":
        """Go's zero Time (an alert's unset EndsAt): 0001-01-01 00:00:00 +0000 UTC."""
        return cls(datetime.datetime(1, 1, 1, tzinfo=UTC))

    @classmethod
    def from_unix(cls, seconds: float) -> "GoTime":
        ms = int(seconds * 1000)          # Prometheus' model.Time has millisecond precision
        return cls(datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(milliseconds=ms))

    def _abbrev(self) -> str:
        if self.zone_name == "UTC":
            return "UTC"
        name = self.dt.tzname() or ""
        if name and (name[0].isalpha()):
            return name
        return self._offset("-0700")

    def _offset(self, fmt: str) -> str:
        off = self.dt.utcoffset() or datetime.timedelta(0)
        secs = int(off.total_seconds())
        sign = "-" if secs < 0 else "+"
        secs = abs(secs)
        hh, mm, ss = secs // 3600, secs // 60 % 60, secs % 60
        if fmt.startswith("Z"):
            if secs == 0:
                return "Z"
            fmt = "-" + fmt[1:]
        body = {"-07": "%02d" % hh, "-0700": "%02d%02d" % (hh, mm), "-07:00": "%02d:%02d" % (hh, mm),
                "-070000": "%02d%02d%02d" % (hh, mm, ss),
                "-07:00:00": "%02d:%02d:%02d" % (hh, mm, ss)}[fmt]
        return sign + body

    def Format(self, layout: str) -> str:
        d = self.dt
        out: List[str] = []
        for std, tok in _layout_tokens(layout):
            if not std:
                out.append(tok)
                continue
            if tok[0] in ".,":
                digits = "%06d" % d.microsecond + "000"
                n = len(tok) - 1
                frac = digits[:n]
                if tok[1] == "9":
                    frac = frac.rstrip("0")
                    out.append(tok[0] + frac if frac else "")
                else:
                    out.append(tok[0] + frac)
                continue
            h12 = d.hour % 12 or 12
            v = {
                "January": _MONTHS[d.month - 1], "Jan": _MONTHS[d.month - 1][:3],
                "Monday": _DAYS[d.weekday()], "Mon": _DAYS[d.weekday()][:3],
                "2006": "%04d" % d.year, "06": "%02d" % (d.year % 100),
                "002": "%03d" % d.timetuple().tm_yday,
                "01": "%02d" % d.month, "1": str(d.month), "02": "%02d" % d.day,
                "_2": "%2d" % d.day, "2": str(d.day), "15": "%02d" % d.hour, "03": "%02d" % h12,
                "3": str(h12), "04": "%02d" % d.minute, "4": str(d.minute),
                "05": "%02d" % d.second, "5": str(d.second),
                "PM": "PM" if d.hour >= 12 else "AM", "pm": "pm" if d.hour >= 12 else "am",
                "MST": None,
            }.get(tok, "")
            if tok == "MST":
                v = self._abbrev()
            elif tok[0] in "Z-":
                v = self._offset(tok)
            out.append(v or "")
        return "".join(out)

    def __str__(self) -> str:
        return self.Format("2006-01-02 15:04:05.999999999 -0700 MST")

    def UTC(self) -> "GoTime":
        return GoTime(self.dt.astimezone(UTC))

    def Unix(self) -> int:
        return int(self.dt.timestamp() // 1)

    def UnixMilli(self) -> int:
        return (self.dt - datetime.datetime(1970, 1, 1, tzinfo=UTC)) // datetime.timedelta(milliseconds=1)

    def In(self, zone: str) -> "GoTime":
        return in_zone(zone, self)

    def IsZero(self) -> bool:
        return self.dt == datetime.datetime(1, 1, 1, tzinfo=UTC)

    def Sub(self, other: "GoTime") -> "GoDuration":
        d = self.dt - other.dt
        ns = (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
        return GoDuration(max(-(1 << 63), min(ns, (1 << 63) - 1)))    # Go saturates

    def Before(self, other: "GoTime") -> bool:
        return self.dt < other.dt

    def After(self, other: "GoTime") -> bool:
        return self.dt > other.dt

    def Equal(self, other: "GoTime") -> bool:
        return self.dt == other.dt

    def unix_seconds(self) -> float:
        return (self.dt - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()


def in_zone(name: str, t: GoTime) -> GoTime:
    """time.LoadLocation + Time.In."""
    if name in ("", "UTC"):
        return GoTime(t.dt.astimezone(UTC))
    if name == "Local":
        return GoTime(t.dt.astimezone(), "Local")
    import zoneinfo
    try:
        zone = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone " + name) from None
    return GoTime(t.dt.astimezone(zone), name)


def _fmt_frac(v: int, prec: int) -> str:
    """v/10**prec with trailing zeros trimmed, as Duration.String writes fractions."""
    ip, fp = divmod(v, 10 ** prec)
    f = ("%0*d" % (prec, fp)).rstrip("0") if prec else ""
    return str(ip) + ("." + f if f else "")


class GoDuration:
    """A time.Duration in nanoseconds; str() is Go's Duration.String() ("1h0m1s", "1.5ms")."""

    go_type_name = "time.Duration"
    go_stringer = True

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __str__(self) -> str:
        ns = self.ns
        if ns == 0:
            return "0s"
        sign = "-" if ns < 0 else ""
        u = abs(ns)
        if u < 1_000_000_000:
            if u < 1000:
                return sign + "%dns" % u
            if u < 1_000_000:
                return sign + _fmt_frac(u, 3) + "µs"
            return sign + _fmt_frac(u, 6) + "ms"
        secs = _fmt_frac(u % 60_000_000_000, 9) + "s"
        mins = u // 60_000_000_000
        if mins == 0:
            return sign + secs
        hours = mins // 60
        if hours == 0:
            return sign + "%dm" % mins + secs
        return sign + "%dh%dm" % (hours, mins % 60) + secs

    def Seconds(self) -> float:
        return self.ns / 1e9

    def Minutes(self) -> float:
        return self.ns / 6e10

    def Hours(self) -> float:
        return self.ns / 3.6e12

    def Milliseconds(self) -> int:
        return int(self.ns / 1_000_000)

    def String(self) -> str:
        return str(self)
