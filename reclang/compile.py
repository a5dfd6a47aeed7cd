"""The driver, in the order its stages run:

    parse        spec text -> ast.Cell                  (reclang/parser.py)
    IR           ast.Cell -> IR, checked                (reclang/ast_to_ir.py)
    plan         IR -> Plan: partition, structures,     (reclang/analysis/plan.py; its forms
                 readouts, forms                         by analysis/ir_to_forms.py, lazily)
    backend      the registered backend of that name    (reclang/backends/base.py)
                 whose forms hold the plan's; its verdict
    schedule     its default, or the user's             (reclang/schedule.py)
    lower        Plan + Schedule -> generated source    (backend.lower)
    load         source -> Python module                (reclang/generated.py)
    module       IR + module -> nn.Module               (reclang/module.py)

    cell = reclang.load("specs/gla.rec", H=4)   # parse and check (RecError on problems)
    m = cell.module(backend="sequential")       # generate, load, bind parameters
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from . import config, cost
from .ast_to_ir import build_ir
from .backends import base as registry
from .cost.auto import AutoChoice, candidates
from .errors import Loc, RecError, Source, at
from .generated import load_source
from .hoist import hoist
from .ir import IR
from .module import RecModule
from .parser import parse
from .schedule import Schedule


class Cell:
    """A checked cell with its hyperparameters fixed: what `load` returns."""

    def __init__(self, ir: IR):
        self.ir = ir
        with at(Loc(0, 0, ir.source), "hoisting"):  # what the plan and the backends see
            self.hoisted, self.prologue = hoist(ir)
        self.name = ir.name
        self.hypers = dict(ir.hypers)
        self._sources: dict[tuple, str] = {}
        self._plan = None
        self._verdicts = None

    def __repr__(self) -> str:
        hypers = ", ".join(f"{k}={v!r}" for k, v in self.hypers.items())
        return f"<reclang cell {self.name}({hypers})>"

    @property
    def plan(self):
        """The analyzer's plan: the recurrence's partition, structure and form."""
        if self._plan is None:
            from .analysis.plan import make_plan
            self._plan = make_plan(self.hoisted)
        return self._plan

    @property
    def verdicts(self) -> tuple:
        """Each backend's verdict on the plan: `Verdict(backend, supported, reason,
        condition)`, in the order `reclang inspect` lists them."""
        if self._verdicts is None:
            with at(Loc(0, 0, self.ir.source), "analysis"):  # each backend's own checks
                self._verdicts = registry.verdicts(self.plan)
        return self._verdicts

    def verdict(self, backend: str):
        return next(v for v in self.verdicts if v.backend == backend)

    def supports(self, backend: str) -> bool:
        return any(v.backend == backend and v.supported for v in self.verdicts)

    def proves(self, backend: str) -> bool:
        """Whether the backend runs the cell on any inputs: supported, with nothing left
        to check at run time (what `auto` may choose)."""
        return any(v.backend == backend and v.supported and not v.condition
                   for v in self.verdicts)

    def describe(self) -> str:
        """The plan and the verdicts, as `reclang inspect` prints them."""
        width = max(11, *(len(v.backend) + 1 for v in self.verdicts))
        lines = [self.plan.describe(), "", "backends:"]
        lines += [f"  {v.backend:<{width}}{'yes' if v.supported else 'no '}  {v.reason}"
                  for v in self.verdicts]
        return "\n".join(lines)

    def to_json(self) -> str:
        return self.plan.to_json(backends=[v.__dict__ for v in self.verdicts])

    def lowering(self, backend: str = "sequential"):
        """The registered backend that runs the cell under that name (a RecError when
        none can: an unknown name, or its verdict's reason)."""
        return registry.claimant(self.plan, self._backend(backend))

    def form(self, backend: str = "sequential"):
        """The form object the backend lowers (analysis/forms.py; None: the sequential
        loop, which lowers the IR itself)."""
        return self.lowering(backend).form(self.plan)

    def schedule(self, backend: str = "sequential", chunk_size: int | None = None,
                 schedule: Schedule | None = None) -> Schedule:
        """The schedule a backend runs the cell with: `schedule` (of the type the
        backend's lowering takes: reclang/schedule.py), else its default; `chunk_size`,
        a shortcut, sets the chunk where the schedule has one (the chunk length C of
        the chunk backend and of the triton backend's chunk kernels)."""
        lowering = self.lowering(backend)
        if schedule is None:
            schedule = lowering.default_schedule(self.plan)
        elif not isinstance(schedule, lowering.schedules):
            raise RecError(f"backend {lowering.name!r} runs cell {self.name} with a "
                           f"{lowering.schedules.__name__}, not {schedule!r}", self.ir.source)
        if chunk_size is not None and "chunk" in {f.name for f in fields(schedule)}:
            schedule = replace(schedule, chunk=chunk_size)
        return schedule

    def source(self, backend: str = "sequential", chunk_size: int | None = None,
               schedule: Schedule | None = None) -> str:
        """The generated source for a backend (`chunk_size`, `schedule`: see
        `schedule`), lowered once per schedule."""
        return self._lowered(backend, chunk_size, schedule)

    def module(self, backend: str = "sequential", chunk_size: int | None = None, *,
               schedule: Schedule | None = None, device=None, dtype=None) -> RecModule:
        """A fresh nn.Module (new parameters, initialized as the spec says, of `device` and
        `dtype` as nn.Linear's: by default the default dtype).

        `auto`: on CPU tensors the fastest backend the plan proves, measured per size
        (reclang/cost/auto.py; `auto_backends`' CPU one where nothing is measured), and on
        CUDA tensors the one it names for CUDA (same parameters, other generated code).
        `schedule`: how the backend runs the cell (reclang/schedule.py; not with `auto`,
        whose backends take different ones)."""
        on_cuda = None
        if backend == "auto":
            if schedule is not None:
                raise RecError("a schedule is given for one backend, not for 'auto'",
                               self.ir.source)
            backend, on_cuda = self.auto_backends()
        backend = self._backend(backend)
        m = RecModule(self.ir, backend, *self._generated(backend, chunk_size, schedule),
                      device=device, dtype=dtype, prologue=self._prologue())
        if on_cuda is not None:
            m._auto = AutoChoice(self, chunk_size)
        if on_cuda not in (None, backend):
            m.use_on("cuda", on_cuda, build=Deferred(self, on_cuda, chunk_size))
        return m

    def function(self, backend: str = "auto"):
        """The cell as `f(q, k, v, ..., scale=None, initial_state=None,
        output_final_state=False, cu_seqlens=None) -> (o, final_state or None)`,
        flash-linear-attention's calling convention (reclang/function.py)."""
        from .function import CellFunction
        return CellFunction(self, backend, loads)

    def auto_backends(self) -> tuple[str, str]:
        """The backends `auto` runs on the CPU and on CUDA, from the plan:

        - on CPU tensors where nothing is measured (reclang/cost/auto.py) the first of
          reclang/cost/__init__.py's ranking (chunk, the compiled cpu loop, scan,
          sequential) that the plan proves, with the figures behind it
          (docs/benchmarks.md); RECLANG_AUTO_COMPILED=0 leaves out the compiled loop;
        - on CUDA tensors, `triton` where its plan allows it (diag, diag-lti, mat-decay,
          dplr, nonlinear) and triton is installed: on an H100 diagonal cells ran
          1.2-2.5x faster than on `scan` and 36-136x faster than the loop, the kernel at
          92% of the memory bandwidth (the diagonal scan; the gated scan, which since
          runs minGRU, minLSTM, HGRN, RG-LRU and Mamba S6 with their gates in the kernel, is not
          timed yet). For matrix states the kernels (the chunkwise
          form for mat-decay, the recurrent form for dplr) are not yet timed on a GPU:
          they are preferred because the PyTorch chunk backend materializes C x C x K
          decays (7 GiB against fla's 1.3 GiB for GLA, docs/benchmarks.md) and runs
          many small kernels. For nonlinear cells (LSTM, GRU, sLSTM) the fused loop,
          not yet timed on a GPU either: it runs T steps in one launch where the loop
          launches several kernels per step. The reason triton is not used shows in
          `cell.verdicts`;
        - else the CPU ranking without the compiled loop;
        - only a backend the plan proves runs the cell on any inputs (`Plan.proves`):
          not one that checks a condition at run time (the chunkwise form's positive
          decays, where the analyzer cannot prove them)."""
        cuda = "triton" if self.proves("triton") else cost.cpu_choice(self, False)[0]
        return cost.cpu_choice(self)[0], cuda

    def auto_summary(self) -> str:
        """What `auto` runs on each device, and why not triton on CUDA tensors."""
        cpu, cuda = self.auto_backends()
        measured = config.auto_measure() and len(candidates(self)) > 1
        where = " where nothing is measured" * measured
        text = f"{cpu} on CPU tensors{where}, {cuda} on CUDA tensors"
        if cuda != "triton":
            text += f" (not triton: {self.verdict('triton').reason})"
        return text

    def _lowered(self, backend: str, chunk_size: int | None, schedule=None) -> str:
        """The driver's stages from the plan to the source, in order."""
        plan = self.plan                                      # plan (forms built lazily)
        lowering = self.lowering(backend)                     # choose the backend: a yes
        schedule = self.schedule(backend, chunk_size, schedule)  # its schedule
        if (lowering.name, schedule) not in self._sources:    # lower, once per schedule
            with at(Loc(0, 0, self.ir.source), f"lowering ({lowering.name})"):  # per node: codegen
                self._sources[lowering.name, schedule] = lowering.lower(plan, schedule)
        return self._sources[lowering.name, schedule]

    def _generated(self, backend: str, chunk_size: int | None, schedule=None):
        """The source (`_lowered`) and its loaded module."""
        source = self._lowered(backend, chunk_size, schedule)
        generated = load_source(source, f"{self.name}_{self._backend(backend)}",  # load
                                self.ir.source)
        if config.debug_level() >= 4:
            print(source)
        return source, generated

    def prologue_source(self) -> str | None:
        """The generated prologue every backend's module runs first: the values of lag,
        t and subscript expressions over whole sequences (reclang/hoist.py); None when
        the cell has none."""
        if self.prologue is None:
            return None
        if "prologue" not in self._sources:
            from .codegen.prologue import source
            with at(Loc(0, 0, self.ir.source), "lowering (prologue)"):
                self._sources["prologue"] = source(self.ir, self.prologue)
        return self._sources["prologue"]

    def _prologue(self):
        """(Prologue, its source, its module) for RecModule, or None."""
        text = self.prologue_source()
        if text is None:
            return None
        if config.debug_level() >= 4:
            print(text)
        return self.prologue, text, load_source(text, f"{self.name}_prologue", self.ir.source)

    def _backend(self, backend: str) -> str:
        """The backend to use; an explicit one must be able to run the plan."""
        if backend == "auto":
            return self.auto_backends()[0]
        if backend not in registry.names():
            raise RecError(f"unknown backend {backend!r}; available: "
                           f"{', '.join(registry.names() + ('auto',))}", self.ir.source)
        verdict = self.verdict(backend)
        if not verdict.supported:
            raise RecError(f"backend {backend!r} cannot run cell {self.name}: {verdict.reason}",
                           self.ir.source)
        return backend


class Deferred:
    """A backend's (source, module), generated when first called: `auto` builds the CUDA
    backend only for CUDA tensors. Pickles as the spec, so a copied module keeps it."""

    def __init__(self, cell: Cell, backend: str, chunk_size: int | None):
        self.cell, self.backend, self.chunk_size = cell, backend, chunk_size

    def __call__(self):
        return self.cell._generated(self.backend, self.chunk_size)

    def __reduce__(self):
        source = self.cell.ir.source
        return _deferred, (source.text, source.filename, self.cell.hypers, self.backend,
                           self.chunk_size)


def _deferred(text: str, filename: str, hypers: dict, backend: str, chunk_size):
    return Deferred(Cell(build_ir(parse(text, filename), hypers)), backend, chunk_size)


def loads(text: str, filename: str = "<string>", **hypers) -> Cell:
    """Parses and checks a spec given as text."""
    cell = Cell(build_ir(parse(text, filename), hypers))
    level = config.debug_level()
    if level >= 2:
        print(f"# IR of {filename}\n{cell.ir.summary()}")
    if level >= 3:
        print(f"# plan of {filename}\n{cell.describe()}")
    return cell


def load(path: str | Path, **hypers) -> Cell:
    """Parses and checks a `.rec` file; keyword arguments override hyperparameters."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecError(f"cannot read {path}: {err.strerror}", Source("", str(path))) from None
    return loads(_decode(data, str(path)), str(path), **hypers)


def _decode(data: bytes, filename: str) -> str:
    """A spec's bytes as text: UTF-8, else a RecError at the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = len(data[data.rfind(b"\n", 0, err.start) + 1:err.start].decode("utf-8")) + 1
        source = Source(data.decode("utf-8", "replace"), filename)
        raise RecError(f"the file is not UTF-8 text: byte 0x{data[err.start]:02x} cannot be "
                       "decoded", source, Loc(line, col)) from None
