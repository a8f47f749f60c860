"""Placeholder for the evaluate command; see the open issue that specifies it."""

import sys

if __name__ == "__main__":
    print("error: scripts/evaluate.py is not implemented yet", file=sys.stderr)
    sys.exit(2)
