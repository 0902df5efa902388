"""``mypy --strict`` accepts a user-style flow module and rejects each line of a wrong one."""

from __future__ import annotations

from pathlib import Path

from mypy import api as mypy_api  # pinned in requirements/lock.txt: a missing mypy fails

HERE = Path(__file__).parent


def run_mypy(path: Path) -> tuple[str, int]:
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir=/dev/null", "--show-error-codes", str(path)]
    )
    return out + err, status


def test_a_correct_user_module_type_checks() -> None:
    out, status = run_mypy(HERE / "good_flow.py")
    assert status == 0, out


def test_each_misuse_is_rejected() -> None:
    path = HERE / "bad_flow.py"
    out, status = run_mypy(path)
    assert status == 1, out
    wrong = {
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.endswith("# wrong")
    }
    reported = set()
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if name.endswith("bad_flow.py") and ": error:" in rest:
            reported.add(int(rest.split(":")[0]))
    assert reported == wrong, out
