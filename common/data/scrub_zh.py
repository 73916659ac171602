"""Chinese PII patterns for common.data.scrub (mainland China banks and hospitals).

Placeholders: a resident ID number is [CN_ID] (its own type: it is not a US SSN and has its own
checksum); mobile and landline numbers are [PHONE], UnionPay cards [CARD] (scrub's Luhn-checked
card pattern already matches 16-19 digits starting 62), 2024年3月5日 / 3月5日 dates [DATE] and
titled names (王先生, 李小明医生) [NAME] before the kept title, like "Dr. [NAME]". One placeholder
per kind of thing across languages keeps a federation of English and Chinese sites consistent.

Precision matters as much as recall: an 18-digit number is an ID only with a valid ISO 7064
MOD 11-2 check digit and a real birth date (positions 7-14) not in the future; a mobile needs
1[3-9] and exactly 11 digits; amounts (¥1,200.50, 1200元), dosages (5毫克), years (2024年),
months (2024年3月) and other numbers stay. Chinese is written without spaces, and Python's \\w
counts CJK characters as word characters, so every boundary here (and in scrub's patterns, via
WORD) treats East Asian script as a boundary: "电话13800138000" is a phone number.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

_EAST_ASIAN = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORD = rf"[^\W{_EAST_ASIAN}]"  # a word character that is not East Asian script (for boundaries)
_HAN = "\u4e00-\u9fff"
_NOT_ALNUM_BEFORE, _NOT_ALNUM_AFTER = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"

RESIDENT_ID = re.compile(_NOT_ALNUM_BEFORE + r"[1-9]\d{5} ?(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                         r" ?\d{3}[\dXx]" + _NOT_ALNUM_AFTER)
MOBILE = re.compile(r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}" + _NOT_ALNUM_AFTER)
LANDLINE = re.compile(r"(?<![0-9A-Za-z+])(?:(?:\+86|0086)[ -]?|0)(?:10|2\d|[3-9]\d{2})-[2-9]\d{6,7}"
                      + _NOT_ALNUM_AFTER + r"|(?<![0-9A-Za-z])[(（]0(?:10|2\d|[3-9]\d{2})[)）] ?[2-9]\d{6,7}"
                      + _NOT_ALNUM_AFTER)
_ID_KEYS = "病历号|病案号|住院号|门诊号|就诊卡号|就诊号|医保卡号|社保卡号|客户号|会员号|保单号|合同号|账号|账户|卡号"
RECORD_ID = re.compile(rf"(?P<key>{_ID_KEYS})(?P<sep>[:：#\s]*(?:是|为)?[:：#\s]*)"
                       r"(?P<id>[A-Za-z]{0,3}\d{4,19})" + _NOT_ALNUM_AFTER)

# Common surnames (single and compound), minus characters that are mostly ordinary words
# (和 于 向 时 成 全 任 管 ...), so "责任护士" and "和医生" are not names.
_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏"
             "魏吕丁沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵"
             "钱严覃武戴莫孔汤温康施牛樊葛邢齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿兰焦俞柳甘祝符舒阮"
             "柯纪梅童凌毕季裴霍涂苗谷盛曲翁冉骆蓝游辛靳柴蒙鲍喻祁蒲滕屈饶牟艾尤穆农卓缪简项麦褚娄"
             "窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂佟臧闵苟邬卞姬仇栾隋刁沙荣巫寇桑郎甄丛仲虞敖巩佘池邝")
_COMPOUND = "欧阳|司马|诸葛|上官|东方|皇甫|尉迟|公孙|慕容|令狐|夏侯|长孙|宇文|司徒|西门"
_TITLES = "护士长|先生|女士|小姐|太太|夫人|医生|大夫|医师|教授|主任|护士|老师|律师|经理|院长|行长|师傅"
TITLE_HINT = re.compile(_TITLES)
NAME = re.compile(rf"(?P<name>(?:{_COMPOUND}|[{_SURNAMES}])[{_HAN}]{{0,2}}?)(?P<title>{_TITLES})")
# A surname character that ends an ordinary word just before it is that word, not a name.
_WORD_BEFORE = frozenset({"感谢", "多谢", "致谢", "谢谢", "答谢", "道谢"})


def resident_id_ok(candidate: str) -> bool:
    """ISO 7064 MOD 11-2 check digit and a real, past birth date (YYYYMMDD at positions 7-14)."""
    s = candidate.replace(" ", "").upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    total = sum(int(c) * (2 ** (17 - i) % 11) for i, c in enumerate(s[:17]))
    if "10X98765432"[total % 11] != s[17]:
        return False
    try:
        born = dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return dt.date(1900, 1, 1) <= born <= dt.date.today()


def scrub_numbers(text: str, hit: Callable[[str], str], n_digits: int) -> str:
    """Resident IDs, then mobile and landline numbers (before scrub's card/SSN/phone patterns,
    which would misname a Luhn-passing ID a card or miss a number glued to Chinese text)."""
    if n_digits >= 17:
        text = RESIDENT_ID.sub(lambda m: hit("CN_ID") if resident_id_ok(m[0]) else m[0], text)
    if n_digits >= 11:
        text = MOBILE.sub(lambda m: hit("PHONE"), text)
    if n_digits >= 9:
        text = LANDLINE.sub(lambda m: hit("PHONE"), text)
    return text


def scrub_record_ids(text: str, hit: Callable[[str], str]) -> str:
    """Numbers after a Chinese record/account keyword (病历号, 住院号, 客户号, 账号 ...) -> [MRN]."""
    return RECORD_ID.sub(lambda m: m["key"] + m["sep"] + hit("MRN"), text)


def scrub_names(text: str, hit: Callable[[str], str]) -> str:
    """1-3 Han characters starting with a surname before a title -> [NAME] + the title."""
    if not TITLE_HINT.search(text):
        return text

    def repl(m: re.Match[str]) -> str:
        name, keep, before = m["name"], "", m.string[m.start() - 1:m.start()] if m.start() else ""
        while name and (before + name[0] in _WORD_BEFORE or name[:2] in _WORD_BEFORE):
            cut = 2 if name[:2] in _WORD_BEFORE else 1
            keep, before, name = keep + name[:cut], name[cut - 1], name[cut:]
        if not name or not re.match(rf"(?:{_COMPOUND}|[{_SURNAMES}])", name):
            return m[0]
        return keep + hit("NAME") + m["title"]
    return NAME.sub(repl, text)


# ---- dates: same (pattern, parser) contract as scrub's date patterns -----------------------
_D_YMD = re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})年(?P<m>1[0-2]|0?[1-9])月(?P<d>3[01]|[12]\d|0?[1-9])(?P<suf>[日号])")
_D_MD = re.compile(r"(?<![\d年])(?P<m>1[0-2]|0?[1-9])月(?P<d>3[01]|[12]\d|0?[1-9])(?P<suf>[日号])")


def _parse_ymd(m: re.Match[str]):
    year = "y" in m.groupdict()
    try:
        when = dt.date(int(m["y"]) if year else 2000, int(m["m"]), int(m["d"]))
    except ValueError:
        return None
    width = 2 if m["m"].startswith("0") or m["d"].startswith("0") else 1  # "03月05日" vs "3月25日"
    return when, lambda w: (f"{w.year}年" if year else "") + f"{w.month:0{width}d}月{w.day:0{width}d}{m['suf']}"


DATE_PATTERNS = ((_D_YMD, _parse_ymd), (_D_MD, _parse_ymd))
