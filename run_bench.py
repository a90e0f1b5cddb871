#!/usr/bin/env python
"""ltrbench's entry point: ``python run_bench.py [command] [options]`` (see README.md)."""
import sys

from ltrbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
