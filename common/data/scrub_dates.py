"""Dates in English text for the PII scrubber (common/data/scrub.py): each pattern has a parser
returning (date, render) or None when the match is not a date; `render` writes a (shifted) date
back in the matched text's own format ("3rd of March 2019", "03/04/19", "2019-03-04")."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
# "May" only capitalised: "a score of 5 may indicate" is not a date.
_MON = (r"(?P<mon>(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|june?|july?|aug(?:ust)?"
        r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)|May|MAY)\b(?P<mdot>\.?)")
_DAY = r"(?P<d>3[01]|[12]\d|0?[1-9])(?P<suf>st|nd|rd|th)?\b"
_YEAR = r"(?:(?P<ysep>,?\s+)(?P<y>(?:19|20)\d{2})\b)"
_D_ISO = re.compile(r"(?<![\d./-])(?P<y>(?:19|20)\d{2})(?P<s>[-/.])(?P<m>1[0-2]|0?[1-9])(?P=s)"
                    r"(?P<d>3[01]|[12]\d|0?[1-9])(?!\d|[./-]\d)")
_D_NUM = re.compile(r"(?<![\d./-])(?P<a>\d{1,2})(?P<s>[/.-])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?!\d|[./-]\d)")
_D_MDY = re.compile(rf"\b{_MON}(?P<sp>\s+){_DAY}{_YEAR}?")
_D_DMY = re.compile(rf"\b{_DAY}(?P<of>\s+(?:of\s+)?){_MON}{_YEAR}?")
_DateFound = tuple[dt.date, Callable[[dt.date], str]] | None
DateParser = Callable[[re.Match[str]], _DateFound]


def _make_date(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def _pad(value: int, like: str) -> str:
    return str(value).zfill(len(like)) if len(like) == 2 else str(value)


def _month_text(month: int, like: str) -> str:
    full = _MONTHS[month - 1]
    low = like.lower()
    name = full if low in _MONTHS else ("sept" if low == "sept" and month == 9 else full[:3])
    return name.upper() if like.isupper() and len(like) > 1 else name if like.islower() else name.capitalize()


def _ordinal(day: int, like: str | None) -> str:
    if not like:
        return ""
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return suffix.upper() if like.isupper() else suffix


def _parse_iso(m: re.Match[str]) -> _DateFound:
    when = _make_date(int(m["y"]), int(m["m"]), int(m["d"]))
    return when and (when, lambda w: f"{w.year}{m['s']}{_pad(w.month, m['m'])}{m['s']}{_pad(w.day, m['d'])}")


def _parse_num(m: re.Match[str]) -> _DateFound:
    a, b, y, sep = int(m["a"]), int(m["b"]), m["y"], m["s"]
    if len(y) == 2 and sep != "/":  # "10-12-15" is more likely a range than a date
        return None
    year = int(y) if len(y) == 4 else (2000 + int(y) if int(y) < 50 else 1900 + int(y))
    month_first = (sep == "/" and a <= 12) or b > 12  # US order for "/", day first otherwise
    when = _make_date(year, a, b) if month_first else _make_date(year, b, a)
    if when is None:
        return None

    def render(w: dt.date) -> str:
        first, second = (w.month, w.day) if month_first else (w.day, w.month)
        yy = str(w.year) if len(y) == 4 else f"{w.year % 100:02d}"
        return f"{_pad(first, m['a'])}{sep}{_pad(second, m['b'])}{sep}{yy}"
    return when, render


def _month_of(m: re.Match[str]) -> int:
    return [x[:3] for x in _MONTHS].index(m["mon"][:3].lower()) + 1


def _year_part(m: re.Match[str], w: dt.date) -> str:
    return f"{m['ysep']}{w.year}" if m["y"] else ""


def _parse_mdy(m: re.Match[str]) -> _DateFound:
    rest = m.string[m.end():m.end() + 1]
    if not m["y"] and not m["suf"] and rest not in ("", ",", ".", ";", ":", "!", "?", ")"):
        return None  # "In June 5 patients died" is a count, not a date
    when = _make_date(int(m["y"] or 2000), _month_of(m), int(m["d"]))
    return when and (when, lambda w: f"{_month_text(w.month, m['mon'])}{m['mdot']}{m['sp']}"
                                     f"{_pad(w.day, m['d'])}{_ordinal(w.day, m['suf'])}{_year_part(m, w)}")


def _parse_dmy(m: re.Match[str]) -> _DateFound:
    when = _make_date(int(m["y"] or 2000), _month_of(m), int(m["d"]))
    return when and (when, lambda w: f"{_pad(w.day, m['d'])}{_ordinal(w.day, m['suf'])}{m['of']}"
                                     f"{_month_text(w.month, m['mon'])}{m['mdot']}{_year_part(m, w)}")


DATE_PATTERNS: tuple[tuple[re.Pattern[str], DateParser], ...] = (
    (_D_ISO, _parse_iso), (_D_NUM, _parse_num), (_D_MDY, _parse_mdy), (_D_DMY, _parse_dmy))
