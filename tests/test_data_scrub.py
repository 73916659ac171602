"""PII/PHI scrubbing: realistic positives AND negatives for every placeholder type."""

import re

import pandas as pd
import pytest

from common.data.scrub import PII_TYPES, date_offset, iban_ok, luhn_ok, scrub_frame, scrub_texts


def scrub1(text, **kw):
    out, counts = scrub_texts([text], **kw)
    return out[0], counts


POSITIVES = [
    ("EMAIL", "please email john.doe@example.co.uk today", "please email [EMAIL] today"),
    ("EMAIL", "Contact: A_B+tag@mail-server.org.", "Contact: [EMAIL]."),
    ("URL", "see https://bank.example.com/login?x=1.", "see [URL]."),
    ("URL", "go to www.example.org/help, then", "go to [URL], then"),
    ("IP", "login from 192.168.1.10 failed", "login from [IP] failed"),
    ("IP", "host 2001:db8::8a2e:370:7334 blocked", "host [IP] blocked"),
    ("IP", "addr fe80::1ff:fe23:4567:890a here", "addr [IP] here"),
    ("CARD", "my card 4111 1111 1111 1111 was stolen", "my card [CARD] was stolen"),
    ("CARD", "number 5500-0000-0000-0004.", "number [CARD]."),
    ("CARD", "amex 3782 822463 10005 ok", "amex [CARD] ok"),
    ("CARD", "card:4012888888881881", "card:[CARD]"),
    ("IBAN", "send to GB82 WEST 1234 5698 7654 32 please", "send to [IBAN] please"),
    ("IBAN", "IBAN DE89370400440532013000.", "IBAN [IBAN]."),
    ("IBAN", "to GB82 WEST 1234 5698 7654 32 ASAP", "to [IBAN] ASAP"),
    ("IBAN", "iban es91 2100 0418 4502 0005 1332 and more", "iban [IBAN] and more"),
    ("SSN", "SSN 123-45-6789 on file", "SSN [SSN] on file"),
    ("SSN", "social security number: 123456789", "social security number: [SSN]"),
    ("PHONE", "call +44 20 7946 0958 now", "call [PHONE] now"),
    ("PHONE", "call (555) 123-4567 now", "call [PHONE] now"),
    ("PHONE", "ring 555-123-4567.", "ring [PHONE]."),
    ("PHONE", "mobile 07700 900123", "mobile [PHONE]"),
    ("PHONE", "tel 020 7946 0958", "tel [PHONE]"),
    ("PHONE", "+4915123456789 is mine", "[PHONE] is mine"),
    ("DATE", "seen on 03/04/2019 in clinic", "seen on [DATE] in clinic"),
    ("DATE", "admitted 2019-03-04.", "admitted [DATE]."),
    ("DATE", "born 3 March 2019", "born [DATE]"),
    ("DATE", "paid on March 3rd, 2019 twice", "paid on [DATE] twice"),
    ("DATE", "charged on March 3, I think", "charged on [DATE], I think"),
    ("DATE", "due 12.05.2020", "due [DATE]"),
    ("DATE", "since 5/6/19", "since [DATE]"),
    ("DATE", "on the 1st of June", "on the [DATE]"),
    ("DATE", "Sept. 14, 2001 attack", "[DATE] attack"),
    ("MRN", "MRN: 1234567", "MRN: [MRN]"),
    ("MRN", "patient id 889922 seen", "patient id [MRN] seen"),
    ("MRN", "see record #A12345", "see record #[MRN]"),
    ("MRN", "my account number is 12345678", "my account number is [MRN]"),
    ("MRN", "NHS number 943 476 5919", "NHS number [MRN]"),
    ("NAME", "Dr. Smith said", "Dr. [NAME] said"),
    ("NAME", "ask Mrs Jane O'Brien today", "ask Mrs [NAME] today"),
    ("NAME", "Prof McDonald-Hay and Ms Lee", "Prof [NAME] and Ms [NAME]"),
    ("NAME", "dr Patel called", "dr [NAME] called"),
    ("NAME", "Dr. A. Smith wrote", "Dr. [NAME] wrote"),
]


@pytest.mark.parametrize("kind,text,want", POSITIVES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(POSITIVES)])
def test_positives(kind, text, want):
    out, counts = scrub1(text)
    assert out == want
    assert counts[kind] == want.count(f"[{kind}]") and counts["rows_with_pii"] == 1
    assert sum(counts[k] for k in PII_TYPES) == counts[kind]


NEGATIVES = [
    "dose 0.5 mg/kg daily", "5 mg twice a day", "p < 0.05", "(p = 0.001)", "p less than .05",
    "in 2019 we started", "in 1998", "cost $1,200.00 and £25", "€1,000,000 transfer",
    "120/80 mmHg", "45% of patients", "aged 67 years", "age 39 +/- 5.3 yr (mean +/- SEM)",
    "potassium 3.5-5.0 mmol/L", "Hb 12.5 g/dL", "reference range 135-145 mmol/L", "n = 1200",
    "95% CI 1.2-3.4", "1998-2002 cohort", "10-12-15 cycles", "a score of 5 may indicate",
    "In June 5 patients died", "from January 1985 to June 1990", "between 1986 and 1990",
    "card 4111 1111 1111 1112 (Luhn-invalid)", "1234567812345678", "order 1234 5678 9012 3456",
    "bad IBAN GB82 WEST 1234 5698 7654 33", "SSN-like 000-12-3456 666-12-3456 900-12-3456",
    "EC 3.4.21.4 protease", "version 10.0.19041.1", "ratio 1:2:3 at 10:30:45", "tel 555-1234",
    "1000 2000 3000 4000 units", "ISBN 978-3-16-148410-0", "MS patients improved", "Miss a payment",
    "the Dr said", "case 12 of 40", "patient 45 years old", "record 2019 results", "top up £100 at 2pm",
    "I was charged 3 times", "x 10(9)/L", "HbA1c 7.5%", "50 mg/m2 on days 1-5", "CD4 count 200 cells/mm3",
    "mean +/- SD 24.5 +/- 3.1", "0.25% bupivacaine", "Grade 3/4 toxicity", "1/2/3 split", "page 123-456",
    "Between 1 and 10", "stage II/III", "sent 100 pounds to my friend", "dial 999", "PIN 1234",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_negatives_survive(text):
    out, counts = scrub1(text)
    assert out == text
    assert counts["rows_with_pii"] == 0


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82")


def test_several_types_in_one_text_are_counted():
    text = "Mr Jones (MRN: 7654321) at jones@example.com, 4111111111111111, seen 2019-03-04."
    out, counts = scrub1(text)
    assert out == "Mr [NAME] (MRN: [MRN]) at [EMAIL], [CARD], seen [DATE]."
    assert {k: v for k, v in counts.items() if v} == {"NAME": 1, "MRN": 1, "EMAIL": 1, "CARD": 1, "DATE": 1,
                                                      "rows_with_pii": 1}


def test_date_shift_keeps_format():
    text = "on 03/04/2019, 2019-03-04, 3 March 2019, March 3rd, 2019, 12.05.2020, 5/6/19, Mar 3, 1st of June"
    out, counts = scrub1(text, date_policy="shift", offsets=[10])
    assert out == ("on 03/14/2019, 2019-03-14, 13 March 2019, March 13th, 2019, 22.05.2020, 5/16/19, "
                   "Mar 13, 11th of June")
    assert counts["DATE"] == 8
    out, _ = scrub1("due 2019-12-25 and 25 DEC 2019", date_policy="shift", offsets=[10])
    assert out == "due 2020-01-04 and 04 JAN 2020" or out == "due 2020-01-04 and 4 JAN 2020"


def test_date_shift_is_per_group_and_deterministic():
    f = pd.DataFrame({"text": ["seen 2019-03-04"] * 3, "group": ["p1", "p1", "p2"]})
    a, _ = scrub_frame(f, date_policy="shift", seed=7)
    b, _ = scrub_frame(f, date_policy="shift", seed=7)
    assert a["text"].tolist() == b["text"].tolist()
    assert a["text"][0] == a["text"][1] != "seen 2019-03-04"
    assert re.fullmatch(r"seen \d{4}-\d{2}-\d{2}", a["text"][2])
    offsets = {date_offset(7, f"p{i}") for i in range(50)}
    assert len(offsets) > 40 and 0 not in offsets and all(-365 <= o <= 365 for o in offsets)
    assert date_offset(7, "p1") != date_offset(8, "p1") or date_offset(7, "p2") != date_offset(8, "p2")


def test_placeholders_are_not_rescrubbed_and_mask_is_default():
    out, _ = scrub1("[EMAIL] [DATE] [NAME] on 2019-03-04")
    assert out == "[EMAIL] [DATE] [NAME] on [DATE]"


def test_sentence_period_after_abbreviated_month_is_kept():
    assert scrub1("It was paid on 5 Mar. Then nothing")[0] == "It was paid on [DATE]. Then nothing"
