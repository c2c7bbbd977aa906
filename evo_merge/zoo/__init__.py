"""The demo model zoo: tiny models built and trained here, offline."""
