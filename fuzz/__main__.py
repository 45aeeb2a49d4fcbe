"""
C{python -m fuzz TARGET [libFuzzer options] [corpus dirs]}: run one target
under atheris with crm_im instrumented for coverage.

Examples::

    python -m fuzz eio_packet -runs=1000000 /tmp/corpus fuzz/seeds/eio_packet
    python -m fuzz polling -max_total_time=60 -artifact_prefix=/tmp/crashes/

libFuzzer writes new inputs into the first corpus directory: give a
scratch directory first and the committed seeds after it.
"""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> None:
    from . import TARGETS

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.stderr.write(f"usage: python -m fuzz {{{','.join(TARGETS)}}} [libFuzzer options] [corpus...]\n")
        raise SystemExit(2)
    import atheris  # type: ignore[import-untyped,unused-ignore]

    name = argv[1]
    # Instrument crm_im (imported for the first time here) so that
    # libFuzzer sees its branches; the target modules are ours.
    with atheris.instrument_imports(include=["crm_im"]):
        module = importlib.import_module(f"fuzz.{name}")
    setup = getattr(module, "setUp", None)
    if setup is not None:
        setup()
    atheris.Setup([argv[0]] + argv[2:], module.TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
