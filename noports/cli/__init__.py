"""Thin argparse front ends: each module exposes ``main(argv=None) -> int``."""
