"""`python -m flows.cli ARGS`: the same as `ragloop ARGS`."""

from flows.cli import main

main()
