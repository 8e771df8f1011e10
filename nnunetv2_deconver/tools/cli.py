"""``nnunetv2_deconver <subcommand>``: every command of the package under one name.

Each subcommand's module owns its arguments (``add_arguments(parser)``) and its work (``run(args)``, the
exit status). ``nnUNetv2_deconver_plan`` and ``nnUNetv2_deconver_compare`` are aliases of ``plan`` and
``compare`` with nnU-Net's flag style.
"""
import argparse
import importlib
import sys

__all__ = ["SUBCOMMANDS", "main"]

# name -> (module, one-line help)
SUBCOMMANDS = {
    "plan": ("nnunetv2_deconver.tools.plan",
             "write Deconver plans (nnUNetDeconverPlans.json) beside a dataset's nnUNetPlans.json"),
    "compare": ("nnunetv2_deconver.tools.compare.command",
                "compare trainers on a dataset: Dice, HD95, Wilcoxon p-values, costs; writes a report folder"),
    "demo": ("nnunetv2_deconver.tools.demo",
             "stock nnU-Net vs Deconver on a synthetic dataset: plan, train, predict, compare"),
    "profile": ("nnunetv2_deconver.tools.profile", "parameters and FLOPs/voxel of the paper's networks vs the paper"),
    "env": ("nnunetv2_deconver.tools.env",
            "print the export lines that let nnUNetv2_train/predict find the Deconver trainers"),
    "dtc-displacement": ("nnunetv2_deconver.tools.dtc_display",
                         "PNG of where the last DTC layer of a trained model samples (DTC paper Fig. 7)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nnunetv2_deconver", description="Deconver for nnU-Net v2")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text))
        module.add_arguments(subparser)
        subparser.set_defaults(func=module.run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
