"""examples/char_lm.py in a shortened quick mode: a 2-layer GRU Stack learns the
standard library's source: the training loss goes down and the held-out score beats a
uniform guess (8 bits) by a margin. 60 steps take about 15 s alone on a 2-core CPU;
the quick mode's 200 steps reach 4.0 bits (docs/nn.md)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOUND = 5.5  # bits per character after 60 steps (4.68 measured; uniform over bytes: 8)


def load_example():
    spec = importlib.util.spec_from_file_location("char_lm", ROOT / "examples" / "char_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_char_lm_learns(tmp_path):
    char_lm = load_example()
    plot = tmp_path / "loss.png"
    curves = char_lm.main(["--quick", "--steps", "60", "--eval-bytes", "2000",
                           "--eval-every", "30", "--no-progress", "--plot", str(plot)])
    train = [bits for _, bits in curves["train"]]
    assert sum(train[-10:]) / 10 < sum(train[:10]) / 10 - 2   # at least 2 bits gained
    held = [bits for _, bits in curves["held_out"]]
    assert held[0] > 7.5 and held[-1] < BOUND                 # from a uniform guess to below
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_corpus_files_exist_and_are_disjoint():
    char_lm = load_example()
    assert not set(char_lm.TRAIN) & set(char_lm.HELD_OUT)
    assert len(char_lm.corpus(char_lm.TRAIN)) > 500_000
    assert all(len(char_lm.corpus([name])) > 2000 for name in char_lm.HELD_OUT)
