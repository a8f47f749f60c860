"""commit-msg hook: the subject must follow the project's style, e.g. 'feat: add KL per-dim logging'."""

import re
import sys
from pathlib import Path

TYPES = ("feat", "fix", "exp", "refactor", "docs", "test", "perf", "chore", "ci", "build", "style")
PATTERN = re.compile(rf"^({'|'.join(TYPES)})(\([a-z0-9_./-]+\))?!?: \S")


def main(path: str) -> int:
    subject = Path(path).read_text().splitlines()[0] if Path(path).read_text() else ""
    if PATTERN.match(subject) or subject.startswith(("Merge ", "Revert ", "fixup! ", "squash! ")):
        return 0
    print(
        f"commit subject {subject!r} must start with one of {', '.join(t + ':' for t in TYPES)} "
        "(e.g. 'feat: add KL per-dimension logging')",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
