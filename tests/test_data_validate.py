"""Loading and validation: every rule raises a DataError naming file, row, column, value and fix."""

import json

import pandas as pd
import pytest

from common.data.config import DataConfig
from common.data.load import load_table, record_hashes
from common.data.validate import validate_frame
from common.errors import ConfigError, DataError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run(path, **kw):
    cfg = kw.pop("cfg", DataConfig())
    raw = load_table(path)
    return validate_frame(raw.frame, cfg=cfg, source=str(path), **kw)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist.*fix:"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load_table(tmp_path / "dir.csv")


def test_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'.*\.csv"):
        load_table(write(tmp_path, "a.xlsx", "x"))


@pytest.mark.parametrize("content,needle", [("", "file is empty"), ("  \n", "file is empty"),
                                            ("text,label\n", "no data rows")])
def test_empty_files(tmp_path, content, needle):
    with pytest.raises(DataError, match=needle):
        load_table(write(tmp_path, "a.csv", content))


def test_misnamed_column_suggests_close_match(tmp_path):
    path = write(tmp_path, "a.csv", "txt,Label\nhello,x\n")
    with pytest.raises(DataError) as err:
        run(path)
    msg = str(err.value)
    assert str(path) in msg and "'text'" in msg and "did you mean 'txt'" in msg and "data.text_column" in msg
    with pytest.raises(DataError, match="did you mean 'Label'"):
        run(path, cfg=DataConfig(text_column="txt"))


def test_undecodable_bytes_name_offset_row_and_fix(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\nfine,a\ncaf\xe9 latte,b\n".encode("latin-1"), mode="wb")
    with pytest.raises(DataError) as err:
        load_table(path)
    msg = str(err.value)
    assert "not valid UTF-8" in msg and "0xe9" in msg and "byte offset 21" in msg
    assert "data row 2" in msg and "re-save" in msg and "UTF-8" in msg


def test_bom_and_crlf_are_fine(tmp_path):
    path = write(tmp_path, "a.csv", "\ufefftext,label\r\nhi there,a\r\n")
    frame, counts = run(path)
    assert frame["text"].tolist() == ["hi there"] and counts["rows_out"] == 1


def test_malformed_csv(tmp_path):
    path = write(tmp_path, "a.csv", 'text,label\n"unterminated,a\n')
    with pytest.raises(DataError, match="cannot parse as csv.*fix:"):
        load_table(path)


@pytest.mark.parametrize("bad", ["", "NaN", "null", "  "])
def test_missing_labels_fail_names_rows(tmp_path, bad):
    path = write(tmp_path, "a.csv", f"text,label\nok one,a\nbad one,{bad}\n")
    with pytest.raises(DataError) as err:
        run(path)
    msg = str(err.value)
    assert "data rows 2 " in msg and "'label'" in msg and "bad_label_policy=drop" in msg


def test_missing_labels_drop_policy_counts(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\nok one,a\nbad one,\nbad two,nan\n")
    frame, counts = run(path, cfg=DataConfig(bad_label_policy="drop"))
    assert frame["row"].tolist() == [1] and counts["missing_labels_dropped"] == 2


def test_label_outside_label_space(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\nfirst,card_arrival\nsecond,card_arival\n")
    with pytest.raises(DataError) as err:
        run(path, label_names=["card_arrival", "pin_blocked"])
    msg = str(err.value)
    for needle in (str(path), "data row 2 (1-based, header not counted; spreadsheet row 3)", "'label'",
                   "'card_arival'", "did you mean 'card_arrival'", "fix:"):
        assert needle in msg


def test_labels_become_ids(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\nfirst,b\nsecond, a \n")
    frame, _ = run(path, label_names=["a", "b"])
    assert frame["label"].tolist() == [1, 0] and str(frame["label"].dtype) == "int64"
    frame, _ = run(path)
    assert frame["label"].tolist() == ["b", "a"]


def test_regression_labels(tmp_path):
    path = write(tmp_path, "a.csv", "text,score\nfirst,1.5\nsecond,-2\n")
    frame, _ = run(path, cfg=DataConfig(label_column="score"), task="regression")
    assert frame["label"].tolist() == [1.5, -2.0]
    path = write(tmp_path, "b.csv", "text,score\nfirst,1.5\nsecond,high\n")
    with pytest.raises(DataError, match="data row 2.*'high' is not a finite number"):
        run(path, cfg=DataConfig(label_column="score"), task="regression")
    with pytest.raises(ConfigError, match="task"):
        run(path, cfg=DataConfig(label_column="score"), task="ranking")


def test_long_rows_policies(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\nshort,a\n" + "x" * 50 + ",a\n")
    frame, counts = run(path, cfg=DataConfig(max_chars=20))
    assert counts["long_rows_dropped"] == 1 and len(frame) == 1
    frame, counts = run(path, cfg=DataConfig(max_chars=20, long_row_policy="truncate"))
    assert counts["long_rows_truncated"] == 1 and frame["text"].str.len().max() == 20
    with pytest.raises(DataError, match="data row 2.*50 characters.*max_chars=20.*fix:"):
        run(path, cfg=DataConfig(max_chars=20, long_row_policy="fail"))


def test_several_text_columns_and_template(tmp_path):
    path = write(tmp_path, "a.csv", "title,body,amount,merchant,label\nHi,there,12.50,Tesco,a\nYo,,3,Aldi,b\n")
    frame, _ = run(path, cfg=DataConfig(text_column="title, body"))
    assert frame["text"].tolist() == ["Hi | there", "Yo"]
    frame, _ = run(path, cfg=DataConfig(template="amount: {amount}; merchant: {merchant}"))
    assert frame["text"].tolist() == ["amount: 12.50; merchant: Tesco", "amount: 3; merchant: Aldi"]
    with pytest.raises(DataError, match="'shop'.*data.template"):
        run(path, cfg=DataConfig(template="{shop}"))
    with pytest.raises(ConfigError, match="label column"):
        run(path, cfg=DataConfig(template="{amount} {label}"))


def test_group_column_missing(tmp_path):
    path = write(tmp_path, "a.csv", "text,label,patient_id\nhi,a,p1\n")
    with pytest.raises(DataError, match="did you mean 'patient_id'"):
        run(path, cfg=DataConfig(group_column="patient"))


def test_tsv_jsonl_parquet(tmp_path):
    tsv = write(tmp_path, "a.tsv", "text\tlabel\nhello, world\ta\n")
    assert run(tsv)[0]["text"].tolist() == ["hello, world"]
    jsonl = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in
                                                 [{"text": "one", "label": 3}, {"text": "two", "label": None}]))
    with pytest.raises(DataError, match="data rows 2"):
        run(jsonl)
    frame, _ = run(jsonl, cfg=DataConfig(bad_label_policy="drop"))
    assert frame["label"].tolist() == ["3"]
    pq = tmp_path / "a.parquet"
    pd.DataFrame({"text": ["p one", "p two"], "label": [1.0, 2.0]}).to_parquet(pq)
    assert run(pq)[0]["label"].tolist() == ["1", "2"]


def test_record_hashes_ignore_column_order():
    a = pd.DataFrame({"text": ["x", "y"], "label": ["1", "2"]}, dtype=object)
    b = a[["label", "text"]]
    assert record_hashes(a) == record_hashes(b) and record_hashes(a)[0] != record_hashes(a)[1]


def test_template_with_numeric_format_is_a_config_error(tmp_path):
    path = write(tmp_path, "a.csv", "amount,label\n12.5,a\n")
    with pytest.raises(ConfigError, match="cannot be filled.*fix:"):
        run(path, cfg=DataConfig(template="amount {amount:.2f}"))
