"""python -m tools.autograde: see the package's docstring."""
from data_utils import run_cli
from tools.autograde import main

run_cli(main)
