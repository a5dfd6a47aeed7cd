"""A malformed spec never produces a traceback or a hang: a seeded, bounded campaign of
tests/fuzzing.py (token-, line- and character-level mutations of every catalogue spec,
undecodable files among them), each case in a worker process with a time limit.

Every case loads, plans, compiles and runs, or raises a RecError that names the file,
a line and a column, and quotes that line. FUZZ_EXAMPLES sets the number of cases
(FUZZ_SEED the seed) for a longer campaign; docs/guarantees.md gives the command.
"""

import os

from fuzzing import Runner, cases, check

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("FUZZ_SEED", "16"))
# A case takes well under a second alone; the limit leaves room for a loaded machine
# and still catches a hang (`9 ** 9 ** 9` took hours) or a blow-up.
LIMIT = 60.0


def test_mutated_specs_load_or_give_located_rec_errors(tmp_path):
    runner = Runner(tmp_path, LIMIT)
    failures = {}
    try:
        for case in cases(EXAMPLES, SEED):
            failure, _ = runner.run(case)
            if failure is not None:
                failures.setdefault(failure, case)
    finally:
        runner.close()
    assert not failures, "\n".join(f"{k}:\n{v!r}" for k, v in failures.items())


def test_the_checker_reports_escapes_and_misplaced_quotes(tmp_path, monkeypatch):
    """The campaign above can fail: an exception other than RecError, and a RecError
    whose quoted line is not the one it counts, are reported."""
    import reclang
    from reclang.errors import Source

    assert check("cell c(D = 4):\n    input x[D]\n    out y[d] = x[d]\n", tmp_path) is None
    assert check("cell c(D = 4):\n    out y = zz\n", tmp_path) is None

    def boom(text, filename="<string>", **hypers):
        raise KeyError("x")

    monkeypatch.setattr(reclang, "loads", boom)
    assert check("cell", tmp_path).startswith("KeyError in ")

    def misquote(text, filename="<string>", **hypers):
        raise reclang.RecError("bad", Source("other\nline", filename), reclang.errors.Loc(1, 1))

    monkeypatch.setattr(reclang, "loads", misquote)
    assert check("cell c():\n", tmp_path) == "RecError quoting another line than the one it counts"
