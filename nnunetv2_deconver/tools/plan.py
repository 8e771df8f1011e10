"""``nnUNetv2_deconver_plan``, alias ``nnunetv2_deconver plan``: the command line of
:func:`nnunetv2_deconver.nnunet.planner.plan_dataset`, its options in nnU-Net's flag style and its output.

It writes ``nnUNetDeconverPlans.json`` beside a dataset's ``nnUNetPlans.json`` (see the planner's module for
what the plans hold); the sizing progress goes to stderr, the path written and the training command to
stdout, and a bad input ends with one ``error:`` line and exit status 1.
"""
import argparse
import sys

from nnunetv2_deconver.nnunet.planner import plan_dataset
from nnunetv2_deconver.nnunet.plans import DEFAULT_FRAGMENTS, PlanError

__all__ = ["DESCRIPTION", "add_arguments", "run", "main"]

DESCRIPTION = "``nnUNetv2_deconver_plan``: write ``nnUNetDeconverPlans.json`` beside a dataset's ``nnUNetPlans.json``."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's flag style (as ``nnUNetv2_plan_and_preprocess``): options with a value take one dash,
    switches two."""
    parser.add_argument("-d", required=True, nargs="+", help="dataset id(s) or name(s)")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"], help="configurations (default: 2d 3d_fullres)")
    parser.add_argument("-gpu_memory_target", type=float, default=8.0,
                        help="GPU memory in GB to fit training into (default 8, nnU-Net's reference)")
    parser.add_argument("-kernel", "--kernel", dest="kernel", type=int, choices=sorted(DEFAULT_FRAGMENTS),
                        help="NDC kernel size (paper: 3 or 5): the fragment deconver_k3 (default) or deconver_k5")
    parser.add_argument("-fragment", help="a plans fragment: a shipped name (deconver_k3, deconver_k5, deconver_dtc) "
                                          "or a .json file in the format of plans_overrides/")
    parser.add_argument("-base_channels", "--base_channels", dest="base_channels", type=int, default=32,
                        help="C0 in min(C0 * 2^l, 512) (default 32)")
    parser.add_argument("-source_plans", default="nnUNetPlans", help="the stock plans to start from")
    parser.add_argument("-overwrite_plans_name", default="nnUNetDeconverPlans", help="name of the plans written")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing file of that name that this command did not write")


def _fragment(args: argparse.Namespace) -> str:
    """The fragment ``-kernel`` or ``-fragment`` names (default ``deconver_k3``); PlanError for both or a blank."""
    if args.kernel is not None and args.fragment is not None:
        raise PlanError("give -kernel or -fragment, not both (a fragment fixes the kernel)")
    if args.fragment is not None and not args.fragment.strip():
        raise PlanError("-fragment is empty: give a shipped fragment's name (deconver_k3, deconver_k5, "
                        "deconver_dtc) or a .json file, or leave -fragment out for deconver_k3")
    return args.fragment or DEFAULT_FRAGMENTS[args.kernel or 3]


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        fragment = _fragment(args)
        for dataset in args.d:
            path = plan_dataset(dataset, list(args.c), args.gpu_memory_target, args.base_channels, fragment,
                                args.source_plans, args.overwrite_plans_name, args.force, progress=_progress)
            print(f"wrote {path}; train with: nnUNetv2_train {dataset} CONFIGURATION FOLD -tr nnUNetTrainerDeconver "
                  f"-p {args.overwrite_plans_name}")
    except PlanError as e:
        print(f"nnUNetv2_deconver_plan: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``nnUNetv2_deconver_plan``, the same as ``nnunetv2_deconver plan``."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_deconver_plan", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
