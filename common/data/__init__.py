"""fedtune's site data pipeline: load -> validate -> clean -> scrub PII/PHI -> split -> augment.

Flower-free and torch-free. The public API:

    cfg = DataConfig(text_column="text", label_column="label")
    site = prepare_site("train.csv", cfg=cfg, seed=0, label_names=names, site_dir="site/")
    site.train, site.val, site.test, site.report, site.fingerprint
    shareable_report(site.report, min_count=cfg.min_count_shared)
"""

from common.data.augment import Augmenter, augment_frame, load_synonyms
from common.data.clean import clean_frame, clean_text, dedupe_key
from common.data.config import DataConfig
from common.data.load import RawTable, load_table
from common.data.prepare import PreparedSite, fingerprint_frame, prepare_site
from common.data.report import format_report, shareable_report
from common.data.scrub import PII_TYPES, Scrubber, iban_ok, luhn_ok, scrub_frame, scrub_texts
from common.data.split import assign_splits
from common.data.validate import validate_frame

__all__ = [
    "Augmenter", "DataConfig", "PII_TYPES", "PreparedSite", "RawTable", "Scrubber", "assign_splits",
    "augment_frame", "clean_frame", "clean_text", "dedupe_key", "fingerprint_frame",
    "format_report", "iban_ok", "load_synonyms", "load_table", "luhn_ok", "prepare_site",
    "scrub_frame", "scrub_texts", "shareable_report", "validate_frame",
]
