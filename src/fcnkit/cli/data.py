"""``fcnkit data check``: every bad file of a split at once, with class frequencies."""

from __future__ import annotations

import argparse

from ..data import build_dataset, check_dataset


def cmd_data_check(args: argparse.Namespace) -> int:
    dataset = build_dataset(args.name, args.root, args.split)
    report = check_dataset(dataset, max_samples=args.max_samples)
    print(report.format(list(dataset.classes)))
    return 1 if report.errors else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="validate a dataset: pairs, sizes, label values, class frequencies")
    p.add_argument("name", help="dataset name, e.g. camvid, voc2012, folder")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--max-samples", type=int)
    p.set_defaults(func=cmd_data_check)
