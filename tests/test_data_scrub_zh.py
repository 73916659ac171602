"""Chinese-language sites: width normalisation, Chinese PII positives AND negatives, and
`fedtune prepare` on a Chinese file (counts in the report, no value in any output)."""

import json

import pandas as pd
import pytest

from common.data.clean import clean_text
from common.data.scrub import PII_TYPES, luhn_ok, scrub_texts
from common.data.scrub_zh import resident_id_ok
from tests import simhelp


def with_check(first17: str) -> str:
    """A resident ID number: 17 digits + their ISO 7064 MOD 11-2 check character."""
    total = sum(int(c) * (2 ** (17 - i) % 11) for i, c in enumerate(first17))
    return first17 + "10X98765432"[total % 11]


def luhn_card(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


ID_X = with_check("11010519491231002")          # ...002X
ID_9 = with_check("44030419900307123")
ID_D = with_check("31011519851120321")
BAD_CHECK = ID_D[:-1] + str((int(ID_D[-1]) + 1) % 10)
FEB_30 = with_check("11010519990230123")        # valid check digit, impossible birth date
FUTURE = with_check("11010520990101123")        # valid check digit, born in 2099
CARD19 = luhn_card("622202123456789012")
CARD16 = luhn_card("621700123456789")
BAD_CARD = CARD19[:-1] + str((int(CARD19[-1]) + 1) % 10)


def scrub1(text, **kw):
    out, counts = scrub_texts([clean_text(text)], **kw)
    return out[0], counts


POSITIVES = [
    ("CN_ID", f"身份证号{ID_X}，请核对", "身份证号[CN_ID]，请核对"),
    ("CN_ID", f"证件号码：{ID_9}。", "证件号码：[CN_ID]。"),
    ("CN_ID", f"身份证 {ID_X[:6]} {ID_X[6:14]} {ID_X[14:]} 已登记", "身份证 [CN_ID] 已登记"),
    ("CN_ID", f"ID {ID_X.lower()}", "ID [CN_ID]"),
    ("PHONE", "我的电话是13800138000", "我的电话是[PHONE]"),
    ("PHONE", "联系+86 138 0013 8000谢谢", "联系[PHONE]谢谢"),
    ("PHONE", "手机：0086-139-1234-5678。", "手机：[PHONE]。"),
    ("PHONE", "手机+8615912345678", "手机[PHONE]"),
    ("PHONE", "全角号码１３９１２３４５６７８", "全角号码[PHONE]"),
    ("PHONE", "固话010-62345678", "固话[PHONE]"),
    ("PHONE", "电话（0755）82345678", "电话[PHONE]"),
    ("CARD", f"卡号{CARD19}已冻结", "卡号[CARD]已冻结"),
    ("CARD", f"银联卡 {CARD16[:4]} {CARD16[4:8]} {CARD16[8:12]} {CARD16[12:]} 丢失", "银联卡 [CARD] 丢失"),
    ("DATE", "2024年3月5日入院", "[DATE]入院"),
    ("DATE", "于2024年03月05号办理", "于[DATE]办理"),
    ("DATE", "3月5日复诊", "[DATE]复诊"),
    ("DATE", "于2024-03-05到院", "于[DATE]到院"),
    ("NAME", "王先生您好", "[NAME]先生您好"),
    ("NAME", "李小明医生说要复查", "[NAME]医生说要复查"),
    ("NAME", "请联系欧阳娜娜女士", "请联系[NAME]女士"),
    ("NAME", "张主任和刘护士长查房", "[NAME]主任和[NAME]护士长查房"),
    ("NAME", "感谢王医生", "感谢[NAME]医生"),
    ("NAME", "谢谢陈教授", "谢谢[NAME]教授"),
    ("MRN", "住院号：ZY123456", "住院号：[MRN]"),
    ("MRN", "客户号为88990011", "客户号为[MRN]"),
    ("EMAIL", "邮箱abc@example.com谢谢", "邮箱[EMAIL]谢谢"),       # no space before/after CJK
    ("EMAIL", "邮箱：ａｂｃ＠ｅｘａｍｐｌｅ．ｃｏｍ", "邮箱：[EMAIL]"),   # full-width forms
    ("URL", "网址https://bank.example.cn/login，请登录", "网址[URL]，请登录"),
    ("IP", "登录地址192.168.1.10失败", "登录地址[IP]失败"),
]


@pytest.mark.parametrize("kind,text,want", POSITIVES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(POSITIVES)])
def test_positives(kind, text, want):
    out, counts = scrub1(text)
    assert out == want
    assert counts[kind] == want.count(f"[{kind}]") and counts["rows_with_pii"] == 1
    assert sum(counts[k] for k in PII_TYPES) == counts[kind]


NEGATIVES = [
    "转账¥1,200.50到对方账户", "收费1200元", "手续费￥25.00", "服用5毫克", "10mg每日两次", "每次0.5克",
    "2024年度报告", "2024年3月", "从2019年到2023年", "利率3.85%", "第3次还款", "共12笔交易", "3个月5日",
    "2024年13月5日", "2024年2月30日", "血压120/80mmHg", "体温37.5℃", "金额13800元", "订单12345678901",
    "电话12345678901", "手机1380013800", "手机138001380001", f"身份证{BAD_CHECK}", f"身份证{FEB_30}",
    f"身份证{FUTURE}", "身份证11010519491231002Y", f"卡{BAD_CARD}无效", "这位医生建议复查", "责任护士",
    "主任医师查房", "谢谢医生", "先生们女士们", "家庭医生签约", "客户经理", "各位老师",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_negatives_survive(text):
    out, counts = scrub1(text)
    assert out == clean_text(text)
    assert counts["rows_with_pii"] == 0


def test_resident_id_checksum_and_birth_date():
    assert resident_id_ok(ID_X) and resident_id_ok(ID_9) and resident_id_ok(ID_D)
    assert ID_X.endswith("X") and resident_id_ok(ID_X.lower())
    assert not resident_id_ok(BAD_CHECK) and not resident_id_ok(FEB_30) and not resident_id_ok(FUTURE)
    assert not resident_id_ok(ID_X[:-1]) and not resident_id_ok(ID_X + "1")


def test_chinese_dates_shift_keeping_their_format():
    out, counts = scrub1("2024年3月5日入院，2024年02月25号出院，3月28日复诊", date_policy="shift", offsets=[10])
    assert out == "2024年3月15日入院，2024年03月06号出院，4月7日复诊"
    assert counts["DATE"] == 3


@pytest.mark.parametrize("raw,want", [
    ("你好，世界！", "你好，世界！"),                        # CJK punctuation stays full-width
    ("价格１，２００．５０元", "价格1,200.50元"),              # between ASCII: half-width
    ("（ｐ＝０．０５）见表", "（p=0.05）见表"),                # brackets in CJK text stay a pair
    ("ＡＢＣ　１２３", "ABC 123"),                            # ideographic space, full-width ASCII
    ("“你好”，他说。", "“你好”，他说。"),
    ("ｶﾀｶﾅ｡", "カタカナ。"),                                  # half-width forms -> full-width
    ("ＯＫ！", "OK!"),                                        # no CJK: plain NFKC as before
])
def test_width_normalisation(raw, want):
    assert clean_text(raw) == want


ROWS = [  # (text, label, values that must not appear in any output)
    (f"我的身份证号是{ID_X}，请帮我开户", "开户", [ID_X]),
    (f"本人身份证{ID_9}，申请办理信用卡", "开户", [ID_9]),
    ("请回电13800138000，我想开户", "开户", ["13800138000"]),
    ("联系方式+86 139 1234 5678，办理开户", "开户", ["139 1234 5678"]),
    (f"银联卡{CARD19}被盗刷了", "盗刷", [CARD19]),
    (f"卡号{CARD16}有一笔陌生消费", "盗刷", [CARD16]),
    ("2024年3月5日发现一笔盗刷", "盗刷", ["2024年3月5日"]),
    ("王先生说卡片被盗刷", "盗刷", ["王"]),
    ("李小明医生建议住院观察", "住院", ["李小明"]),
    ("2023年12月8日入院治疗", "住院", ["2023年12月8日"]),
    ("请联系欧阳娜娜女士办理住院", "住院", ["欧阳娜娜"]),
    ("张主任通知明天住院", "住院", ["张"]),
]


@pytest.fixture(scope="module")
def zh_model_dir(tmp_path_factory):
    """A 2-layer BERT (hidden 32) with a character-level Chinese WordPiece vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert-zh")
    chars = {c for text, label, _ in ROWS for c in text + label + "（第次）" if not c.isascii()}
    chars |= {chr(0x4E00 + i) for i in range(0, 3000, 10)}  # a few hundred more CJK characters
    ascii_ = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[", "]", "_", "+", ",", "."]
    vocab += sorted(chars) + list(ascii_) + ["##" + c for c in ascii_]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=0)).save_pretrained(out)
    return out


@pytest.fixture
def zh_prepared(tmp_path):
    """`fedtune prepare` (the real CLI, in a subprocess) on a Chinese CSV holding every PII type."""
    import subprocess

    rows = [(f"{t}（第{i}次）", lab) for i in range(4) for t, lab, _ in ROWS]  # 48 distinct rows
    data = tmp_path / "zh.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data, index=False, encoding="utf-8")
    before = data.read_bytes()
    out = tmp_path / "site"
    proc = simhelp.run("prepare", "--data", str(data), "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert data.read_bytes() == before  # raw data is never modified
    return out, proc.stdout


def test_prepare_chinese_file_counts_every_type_and_leaks_no_value(zh_prepared):
    out, stdout = zh_prepared
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["pii"] == {**dict.fromkeys(PII_TYPES, 0), "CN_ID": 8, "PHONE": 8, "CARD": 8, "DATE": 8,
                             "NAME": 16}
    assert "CN_ID=8" in stdout and "NAME=16" in stdout
    written = "".join((out / name).read_text(encoding="utf-8") for name in
                      ("train.csv", "val.csv", "test.csv", "report.json", "report_shareable.json",
                       "split_manifest.json"))
    for _, _, values in ROWS:
        for value in values:
            assert value not in written, value
    texts = pd.concat([pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test")])["text"].tolist()
    assert len(texts) == 48 and all("（第" in t for t in texts)  # CJK brackets survive cleaning
    assert sum("[CN_ID]" in t for t in texts) == 8 and sum("先生" in t for t in texts) == 4


def test_tiny_chinese_model_reads_the_prepared_text(zh_model_dir, zh_prepared):
    """The prepared Chinese text tokenises into the model's characters and placeholders (no [UNK])."""
    from transformers import AutoTokenizer

    out, _ = zh_prepared
    tok = AutoTokenizer.from_pretrained(str(zh_model_dir))
    texts = pd.read_csv(out / "train.csv")["text"].tolist()
    ids = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert tok.tokenize("[CN_ID]王") == ["[", "c", "##n", "_", "i", "##d", "]", "王"]


@pytest.mark.slow
def test_finetuner_trains_on_prepared_chinese_data(zh_model_dir, zh_prepared):
    """A local Chinese model directory fine-tunes end to end on the scrubbed splits."""
    from fedtune.finetuner import FineTuner

    out, _ = zh_prepared
    train, val = pd.read_csv(out / "train.csv"), pd.read_csv(out / "val.csv")
    tuner = FineTuner(base_model=zh_model_dir, num_classes=3).set_params(
        learning_rate=5e-3, batch_size=8, epochs=2, verbose=False, max_length=48)
    tuner.fit(train["text"].tolist(), train["label"].tolist(), val["text"].tolist(), val["label"].tolist())
    preds = tuner.predict(val["text"].tolist())
    assert set(preds) <= {"开户", "盗刷", "住院"} and len(tuner.history) >= 1
