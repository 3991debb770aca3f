"""Write constraints.txt: the exact versions installed now of ntk-ngd's dependencies (all extras)
and of everything they pull in.

    .venv/bin/python scripts/update_constraints.py        # after a full install: pip install -e ".[test,docs]"

CI installs with ``-c constraints.txt`` (the tested versions) next to pyproject's lower bounds.
Only the dependency closure of ntk-ngd is written, read from the installed packages' metadata
(anything else in the environment is left out); a dependency that is not installed is reported.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "ntk-ngd"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(dist: metadata.Distribution, extras: set) -> list:
    """Names of ``dist``'s requirements that apply with ``extras`` on this platform."""
    from packaging.requirements import Requirement
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None:
            envs = [{"extra": e} for e in (extras or {""})]
            if not any(req.marker.evaluate(env) for env in envs):
                continue
        out.append((canonical(req.name), set(req.extras)))
    return out


def closure() -> dict:
    """{canonical name: installed version} of everything ntk-ngd[all extras] needs."""
    root = metadata.distribution(PROJECT)
    extras = set(root.metadata.get_all("Provides-Extra") or [])
    seen, missing, todo = {}, [], [(canonical(PROJECT), extras)]
    while todo:
        name, ex = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        key = (name, frozenset(ex))
        if key in seen:
            continue
        seen[key] = dist.version
        todo += requirement_names(dist, ex)
    if missing:
        print(f"not installed (left out): {sorted(set(missing))}", file=sys.stderr)
    versions = {n: v for (n, _), v in seen.items() if n != canonical(PROJECT)}
    return dict(sorted(versions.items()))


def main() -> int:
    versions = closure()
    head = ["# Tested versions: the exact versions of ntk-ngd's dependencies (all extras) and of what",
            "# they pull in, from the environment the tests and the docs build passed in.",
            "# Use next to pyproject's lower bounds: pip install -e \".[test]\" -c constraints.txt",
            "# Regenerate after an upgrade: python scripts/update_constraints.py"]
    text = "\n".join(head + [f"{n}=={v}" for n, v in versions.items()]) + "\n"
    (ROOT / "constraints.txt").write_text(text)
    print(f"constraints.txt: {len(versions)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
