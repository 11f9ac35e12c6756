"""Fixtures shared by the training tests."""

import pytest

from so8t.data import load_builtin, write_jsonl


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Small train / dev / test files of built-in rows (8 per label for training, 3 for dev)."""
    d = tmp_path_factory.mktemp("data")
    recs = load_builtin("train")
    pick = lambda label, lang, k, skip=0: [r for r in recs if r.label.name == label and r.lang == lang][skip : skip + k]  # noqa: E731
    train_recs = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, "en", 6) + pick(lab, "ja", 2)]
    dev_recs = [r for lab in ("ALLOW", "ESCALATE", "REFUSE") for r in pick(lab, "en", 3, skip=10)]
    write_jsonl(d / "train.jsonl", train_recs)
    write_jsonl(d / "dev.jsonl", dev_recs)
    write_jsonl(d / "test.jsonl", dev_recs[::-1])
    return d
