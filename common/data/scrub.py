"""PII/PHI scrubbing with typed placeholders, tuned for precision as much as recall.

Placeholders: [EMAIL] [PHONE] [CARD] [IBAN] [SSN] [URL] [IP] [DATE] [MRN] [NAME] [CN_ID]
(Chinese patterns: common.data.scrub_zh; date parsing: common.data.scrub_dates). Checksums
decide cards (Luhn) and IBANs (mod 97); dosages, amounts, percentages, p-values, bare years,
ages, lab values and short numbers are left alone. Cheap per-text pre-checks (digit count, "@",
titles) skip the expensive patterns for most rows. A date needs a day ("3 March 2019",
"03/04/2019", "2019-03-04"); a month with only a year ("June 1990", typical of study periods)
and a bare year are kept. Dates are masked, or shifted by a per-group offset that keeps their
format (the offset derives from the seed: keep the seed private).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence

import pandas as pd

from common.data.scrub_dates import DATE_PATTERNS, DateParser
from common.data.scrub_zh import DATE_PATTERNS as _ZH_DATES, WORD, scrub_names, scrub_numbers, scrub_record_ids

PII_TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "SSN", "URL", "IP", "DATE", "MRN", "NAME", "CN_ID")
_STOP_URL = "\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uff00-\uffef\u201c\u201d"  # a URL ends at CJK text

_W = WORD  # \w minus East Asian script: "邮箱a@b.com" and "电话+86 ..." have boundaries
_URL = re.compile(rf"(?i:(?<!{_W})(?:https?://|ftp://|www\.)[^\s<>\"'\[\]{_STOP_URL}]+)")
_EMAIL = re.compile(rf"(?<!{_W})[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}}(?!{_W})")
_IBAN = re.compile(rf"(?<!{_W})[A-Z]{{2}}\d{{2}}(?: ?[A-Z0-9]{{4}}){{2,7}}(?: ?[A-Z0-9]{{1,3}})?(?!{_W})", re.IGNORECASE)
_CARD = re.compile(
    r"(?<![\d.,/-])(?:\d{13,19}"                                   # contiguous
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{1,3})?"  # 4-4-4-4(-3)
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5})(?![\d]|[.,/-]\d)")       # Amex/Diners 4-6-5/4
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"
                  r"|(?i:\b(?:ssn|social security(?: number| no\.?)?))[\s:#]*(?P<bare>\d{9})\b")
_ID_KEY = (r"(?i:\bMRN\b|\bMR\s?#|\bmedical\s+record(?:\s+(?:number|no\.?|#))?"
           r"|\b(?:patient|member|subscriber|customer|client|hospital|health\s+plan|insurance|policy"
           r"|account|acct|case|chart|record|file|NHS|beneficiary|encounter|visit)"
           r"\s*(?:id\b|no\.|no\b|number\b|num\b|#))")
_MRN = re.compile(_ID_KEY + r"(?P<sep>[\s:#=.-]*(?:(?i:is|was)\s+)?[:#]?\s*)"
                  r"(?P<id>\d{3}\s\d{3}\s\d{4}|[A-Za-z]{0,3}-?\d{4,12}(?:-\d{1,6})?)" rf"(?!{_W})")
_IPV4 = re.compile(rf"(?<!{_W})(?<!\.)(?<!EC )(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){{3}}"
                   rf"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!{_W}|\.\d)")
_IPV6 = re.compile(rf"(?<!{_W})(?<![:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:[0-9A-Fa-f]{{1,4}}|(?:\d{{1,3}}\.){{3}}\d{{1,3}})?"
                   rf"(?!{_W}|:)")
_PHONE = re.compile(
    rf"(?<!{_W})(?<!\+)\+\d{{1,3}}(?:[ .-]?\(?\d{{1,4}}\)?){{1,5}}[ .-]?\d{{2,4}}(?!{_W}|[.,]\d)"   # +44 20 7946 0958
    rf"|(?<!{_W})(?<![.+/-])(?:\(\s*[2-9]\d{{2}}\s*\)\s*|[2-9]\d{{2}}[ .-])\d{{3}}[ .-]\d{{4}}(?!{_W}|-|[.,/]\d)"  # (555) 123-4567
    rf"|(?<!{_W})(?<![.+/-])0\d{{2,4}}[ -]?\d{{3,4}}[ -]?\d{{3,4}}(?!{_W}|-|[.,/]\d)")          # 020 7946 0958
_TITLE_HINT = re.compile(r"\b(?:Mrs?|Ms|Miss|Mx|Dr|Prof(?:essor)?|Doctor|mrs?|dr)\b")
_NAME_TOK = r"(?:[A-Z][a-z]+(?:[A-Z][a-z]+)?(?:['’-][A-Z][a-z]+)*|[A-Z]['’][A-Z][a-z]+|[A-Z]\.)"
_NAME = re.compile(rf"(?<!{_W})(?<!\.)(?P<title>Mrs?|Ms|Miss|Mx|Dr|Prof|Professor|Doctor|mrs?|dr)(?P<dot>\.?)\s+"
                   rf"(?P<name>{_NAME_TOK}(?:\s+{_NAME_TOK}){{0,2}})")
_DIGIT = re.compile(r"\d")

def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN without spaces."""
    compact = compact.upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def date_offset(seed: int, group: str) -> int:
    """Deterministic non-zero day offset in [-365, 365] for one group (patient/customer)."""
    h = int.from_bytes(hashlib.sha256(f"fedtune-date-shift:{seed}:{group}".encode()).digest()[:8], "big")
    days = 1 + h % 365
    return days if (h >> 32) & 1 else -days


class Scrubber:
    """Scrubs texts one at a time and counts hits per placeholder type in ``self.counts``."""

    def __init__(self, *, date_policy: str = "mask") -> None:
        self.date_policy = date_policy
        self.counts = dict.fromkeys(PII_TYPES, 0)
        self.offset = 0

    def _hit(self, kind: str) -> str:
        self.counts[kind] += 1
        return f"[{kind}]"

    def _url(self, m: re.Match[str]) -> str:
        url = m.group(0)
        core = url.rstrip(".,;:!?)")
        return self._hit("URL") + url[len(core):]

    def _iban(self, m: re.Match[str]) -> str:
        parts = m.group(0).split(" ")
        for end in range(len(parts), 0, -1):  # a trailing upper-case word may have been swallowed
            if iban_ok("".join(parts[:end])):
                rest = " ".join(parts[end:])
                return self._hit("IBAN") + (" " + rest if rest else "")
        return m.group(0)

    def _card(self, m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        if digits[0] in "23456" and luhn_ok(digits):
            return self._hit("CARD")
        return m.group(0)

    def _ssn(self, m: re.Match[str]) -> str:
        if m.group("bare"):
            return m.group(0)[: m.start("bare") - m.start()] + self._hit("SSN")
        return self._hit("SSN")

    def _mrn(self, m: re.Match[str]) -> str:
        return m.group(0)[: m.start("id") - m.start()] + self._hit("MRN")

    def _ip4(self, m: re.Match[str]) -> str:
        return self._hit("IP")

    def _ip6(self, m: re.Match[str]) -> str:
        cand = m.group(0)
        if sum(c.isalnum() for c in cand) < 3:
            return cand
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            return cand
        return self._hit("IP")

    def _phone(self, m: re.Match[str]) -> str:
        n = len(_DIGIT.findall(m.group(0)))
        if (m.group(0).startswith("+") and 8 <= n <= 15) or n in (10, 11):
            return self._hit("PHONE")
        return m.group(0)

    def _date(self, parse: DateParser) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            found = parse(m)
            if found is None:
                return m.group(0)
            if self.date_policy == "mask":  # keep a sentence-final period swallowed as "Mar."
                return self._hit("DATE") + ("." if m.group(0).endswith(".") else "")
            self.counts["DATE"] += 1
            when, render = found
            return render(when + dt.timedelta(days=self.offset))
        return repl

    def _name(self, m: re.Match[str]) -> str:
        return f"{m.group('title')}{m.group('dot')} " + self._hit("NAME")

    def scrub(self, text: str, *, n_digits: int | None = None, offset: int = 0) -> str:
        """Replace PII in one text; ``n_digits`` (if known) lets digit-free texts skip most patterns."""
        if n_digits is None:
            n_digits = len(_DIGIT.findall(text))
        self.offset = offset
        if "://" in text or "www." in text or "WWW." in text:
            text = _URL.sub(self._url, text)
        if "@" in text:
            text = _EMAIL.sub(lambda m: self._hit("EMAIL"), text)
        if n_digits >= 9:
            text = scrub_numbers(text, self._hit, n_digits)
            text = _IBAN.sub(self._iban, text) if n_digits >= 10 else text
            text = _CARD.sub(self._card, text) if n_digits >= 13 else text
            text = _SSN.sub(self._ssn, text)
        if n_digits >= 4:
            text = scrub_record_ids(_MRN.sub(self._mrn, text), self._hit)
            text = _IPV4.sub(self._ip4, text) if "." in text else text
        if text.count(":") >= 2:
            text = _IPV6.sub(self._ip6, text)
        if n_digits >= 1:
            for pattern, parse in DATE_PATTERNS + _ZH_DATES if n_digits >= 4 else DATE_PATTERNS[2:] + _ZH_DATES:
                text = pattern.sub(self._date(parse), text)
        if n_digits >= 8:
            text = _PHONE.sub(self._phone, text)
        if _TITLE_HINT.search(text):
            text = _NAME.sub(self._name, text)
        return scrub_names(text, self._hit)


def scrub_texts(texts: Sequence[str], *, date_policy: str = "mask",
                offsets: Sequence[int] | None = None) -> tuple[list[str], dict[str, int]]:
    """Scrub many texts; returns (texts, hits per type plus "rows_with_pii").

    ``offsets`` gives each text's date-shift offset in days (used when date_policy="shift").
    """
    series = pd.Series(list(texts), dtype="str")
    n_digits = series.str.count(r"\d").tolist()
    scrubber = Scrubber(date_policy=date_policy)
    out: list[str] = []
    changed = 0
    for i, (text, nd) in enumerate(zip(series.tolist(), n_digits)):
        new = scrubber.scrub(text, n_digits=nd, offset=offsets[i] if offsets is not None else 0)
        changed += new != text
        out.append(new)
    counts = dict(scrubber.counts)
    counts["rows_with_pii"] = changed
    return out, counts


def scrub_frame(frame: pd.DataFrame, *, date_policy: str, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Scrub the ``text`` column; date shifts use one offset per ``group`` (or per site if none)."""
    offsets = None
    if date_policy == "shift":
        groups = frame["group"].astype(str).tolist() if "group" in frame else [""] * len(frame)
        table = {g: date_offset(seed, g) for g in set(groups)}
        offsets = [table[g] for g in groups]
    texts, counts = scrub_texts(frame["text"].tolist(), date_policy=date_policy, offsets=offsets)
    return frame.assign(text=texts), counts
