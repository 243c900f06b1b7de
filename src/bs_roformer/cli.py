"""The `bs-roformer` command line, a thin layer over the package."""

import argparse
import sys

from . import __version__
from .checkpoint import describe, load_state_dict


def inspect_command(args) -> int:
    state = load_state_dict(args.checkpoint)
    print(describe(state))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bs-roformer", description="BS-RoFormer and Mel-Band RoFormer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the model configuration a checkpoint implies")
    inspect.add_argument("checkpoint", help=".ckpt/.pth/.pt or .safetensors file")
    inspect.set_defaults(run=inspect_command)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"bs-roformer {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
