"""`python -m gpupass.core.cli` runs the CLI (the console script is `gpupass`)."""

from gpupass.core.cli.entry import main

main()
