"""`python -m evo_merge` runs the `evo-merge` command."""

from evo_merge.cli import main

main()
