#!/usr/bin/env python3
"""Write the paper's search and test data as the JSONL files the task files read.

    pip install datasets
    python prepare_data.py            # -> data/gsm8k_ja_250_1319.jsonl, data/mgsm_ja.jsonl

Search: SakanaAI/gsm8k-ja-test_250-1319 (the 1069 GSM8K test items that are not in MGSM,
machine-translated to Japanese), in the dataset's order. Test: juletxara/mgsm, config "ja",
split "test" (250 items = GSM8K test ids 0-249). Each line: {"id", "question", "answer"} with
the answer a number (the dataset's answer_number, or the number after "####" of a GSM8K answer).
"""
import json
import os
import re
import sys

from datasets import load_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data")


def answer_of(row):
    if row.get("answer_number") is not None:
        value = row["answer_number"]
    else:
        m = re.search(r"####\s*([-\d.,]+)", row.get("answer") or "")
        if not m:
            raise SystemExit(f"no answer_number and no '#### N' in row {row!r}")
        value = m.group(1).replace(",", "")
    value = float(value)
    return int(value) if value.is_integer() else value


def write(rows, name, prefix, expected):
    rows = list(rows)
    if len(rows) != expected:
        sys.exit(f"{name}: expected {expected} items, got {len(rows)}")
    path = os.path.join(OUT, name)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            item = {"id": f"{prefix}-{i}", "question": row["question"], "answer": answer_of(row)}
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"{path}: {len(rows)} items")


def main():
    os.makedirs(OUT, exist_ok=True)
    search = load_dataset("SakanaAI/gsm8k-ja-test_250-1319", split="test")
    write(search, "gsm8k_ja_250_1319.jsonl", "gsm8k-ja", 1069)
    test = load_dataset("juletxara/mgsm", "ja", split="test")
    write(test, "mgsm_ja.jsonl", "mgsm-ja", 250)


if __name__ == "__main__":
    main()
