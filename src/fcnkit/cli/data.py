"""``fcnkit data check``: every bad file of one or more splits at once, class frequencies, and groups that
leak between splits."""

from __future__ import annotations

import argparse
import sys

from ..data import build_dataset, check_dataset, label_traps, shared_groups
from .args import add_option_arg, dataset_options


def cmd_data_check(args: argparse.Namespace) -> int:
    splits = args.split or ["train"]
    options = dataset_options(args.option)
    datasets = {split: build_dataset(args.name, args.root, split, **options) for split in splits}
    failed = False
    for split, dataset in datasets.items():
        if len(splits) > 1:
            print(f"== {args.name} {split}")
        report = check_dataset(dataset, max_samples=args.max_samples)
        print(report.format(list(dataset.classes)))
        traps = label_traps(report, f"{args.name}/{split}")
        for trap in traps:
            print(f"error: {trap}", file=sys.stderr)
        failed |= bool(report.errors or traps)
    names = list(datasets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            leaking = shared_groups(datasets[a], datasets[b])
            if leaking:
                print(
                    f"warning: splits {a!r} and {b!r} share {len(leaking)} group(s): {', '.join(leaking)}. Samples of "
                    "one group (frames of one video or drive) are near-copies: a score on one split measures memory "
                    "of the other. Hold out whole groups (dataset options groups / exclude_groups).",
                    file=sys.stderr,
                )
    return 1 if failed else 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from ..data.splits import make_group_splits

    result = make_group_splits(
        args.root, val=args.val, test=args.test, seed=args.seed, group_pattern=args.group_pattern,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(result.format())
    if result.ungrouped:
        print(
            "warning: no groups (no groups.txt, no --group-pattern): each image is its own group. Frames of one "
            "video or scene split this way leak into validation; name the groups and run it again.",
            file=sys.stderr,
        )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser(
        "split",
        help="write splits/train.txt, val.txt (test.txt) for a folder dataset, keeping each group (video, scene, "
        "patient) on one side",
    )
    p.add_argument("root", help="a folder dataset: classes.yaml, images/*, masks/*")
    p.add_argument("--val", type=float, default=0.2, help="share of the images for validation (default 0.2)")
    p.add_argument("--test", type=float, default=0.0, help="share of the images for a test split (default none)")
    p.add_argument("--seed", type=int, default=0, help="which groups go where (default 0)")
    p.add_argument(
        "--group-pattern",
        help="regular expression whose match (or first group) in a file stem names its group, e.g. '^[^_]+' for "
        "street07_000123 (default: root/groups.txt, else no groups)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing splits/*.txt files")
    p.set_defaults(func=cmd_data_split)
    p = data.add_parser(
        "check", help="validate a dataset: pairs, sizes, label values, class frequencies, groups shared by splits"
    )
    p.add_argument("name", help="dataset name, e.g. camvid, voc2012, folder")
    p.add_argument("--root", required=True)
    p.add_argument(
        "--split", action="append", help="a split (repeat to check several and compare their groups; default train)"
    )
    add_option_arg(p)
    p.add_argument("--max-samples", type=int)
    p.set_defaults(func=cmd_data_check)
