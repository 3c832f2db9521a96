"""Fidelity benchmark: does a per-layer mix of formats beat a uniform format
at equal cost, and does the sensitivity guide it? Real data (scikit-learn's
digits), ``digits_cnn``, a regime with headroom (2- to 4-bit weights).

Protocol (version 1, written before any result was seen; a later change is
listed with its reason in ``docs/fidelity.md`` and ``fidelity.protocol``):

- **Seeds** 0, 1, 2. Per seed, digits_cnn is trained in FP32 from random
  init (300 SGD steps, lr 0.05, batch 64); every method of that seed starts
  from those weights.
- **Options**: integer weights INT2, INT3, INT4, INT8 (per-channel scales) x
  activations INT4, INT8; floating point weights E2M1, E3M2, E4M3 x
  activations E2M1, E4M3.
- **Budgets**: ``bops_w3a4`` the BOPs of uniform W3A4 (the tightest, where
  the RESULT differences are measured); ``size_int3`` the weight bytes (with
  scales) of uniform INT3; ``bops_mid`` the BOPs halfway between uniform
  W2A8 and W4A8; ``fp_bops`` the BOPs of uniform E3M2 weights with E2M1
  activations, over the FP options.
- **Sensitivity**: Hutchinson weight traces of the FP32 model on two training
  batches of 128 (relative SE 0.1, at most 60 probes), by the sensitivity
  service's own code; Omega = Tr(H) / P x ||Q(W) - W||^2 per option.
- **Methods at each budget**: (1) ``lcpaq``: the ILP (solver service's code)
  at the budget; (2) ``fliqs``: the one-shot search from the FP32 weights,
  one-sided at the budget, weights and activations decided apart over the
  set's weight formats, 10 % warm-up, served as trained; (3) ``uniform``:
  the uniform configuration that fits with the least total Omega, ties to
  the costlier; (4) ``uniform_above``: that with weights one format up (over
  budget by design); (5) ``random``: 5 configurations drawn uniformly from
  all that cost within 2 % below the budget, averaged per seed;
  (6) ``shuffled``: the ILP with the normalised traces moved to other layers
  (a seeded derangement), each option keeping its own weight error.
- **Regimes**: PTQ (calibration on 8 training batches of 64, no training)
  and QAT (150 SGD steps, lr 0.01, cosine, distilled from the FP32 model
  with alpha 0.95 and T 6: the same recipe for every QAT row). FLIQS's QAT
  row is its search run (same steps); its PTQ row calibrates its choice.
- **Evaluation**: test-split accuracy and loss, the shared cost model.
- **Statistics**: per (budget, method, regime) the mean and 95 % t-interval
  over seeds; differences are paired per seed.
- **Is the sensitivity right**: each layer alone quantized to INT2 (then
  INT3) weights, PTQ; the test-loss increase against its Omega at that
  format: Spearman over the layers, per seed.
- **Where it does not win** (variants at the tightest budget): Omega plus
  the activation term Tr(H_a)/dim(a) x E||Q(a) - a||^2 (HAWQ-V3's
  activation traces); per-tensor weight scales (LCPAQ and the uniform fit
  both); three times the QAT steps (LCPAQ and the uniform fit both).

Protocol version 2, changed after v1's results were seen (the reasons are in
``docs/fidelity.md``): a fifth budget ``bops_w2_w3``, halfway between the BOPs
of uniform W2A4 and W3A4, where no uniform configuration spends the budget;
the variants run there too; and one more variant, ``lcpaq_measured``: the
ILP minimises each layer's measured training-loss increase at each option
instead of Omega. Nothing of v1 was removed or changed.

Work runs in 2 processes (one torch thread each). Finished stages are kept
in ``--work`` (the pipeline's stage cache), so an interrupted run resumes.

    .venv/bin/python benchmarks/bench_fidelity.py [--seeds 3] [--budgets bops_w3a4,...]

Bad input (an unknown format, a budget below every configuration) exits 2
with a message. The last line is ``RESULT lcpaq_minus_uniform_ptq=...
lcpaq_minus_uniform_qat=... lcpaq_minus_random=... lcpaq_minus_shuffled=...
fliqs_minus_uniform=... omega_spearman=...``: mean differences in accuracy
points at the tightest budget (QAT unless named ``_ptq``), and the INT2
Spearman correlation.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The repository (bitmesh, the services) and this folder (the ``fidelity`` parts),
# also when the script is imported by path, as the test suite does.
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from fidelity import protocol  # noqa: E402
from fidelity.protocol import BUDGETS, OPTION_SETS, Budget, OptionSet, Training  # noqa: E402

from bitmesh.errors import InvalidArgument  # noqa: E402
from bitmesh.formats import get_format  # noqa: E402
from bitmesh.pipeline.cache import StageCache  # noqa: E402

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A request the benchmark cannot run; the message says what to fix."""


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _prepare(seed: int, training: Training, folder: str, sets: list[OptionSet]) -> dict[str, Any]:
    from fidelity.prepare import prepare_seed

    return prepare_seed(seed, training, Path(folder), sets)


def _unit(
    kind: str,
    prepared: dict[str, Any],
    budget: Budget,
    limit: float,
    option_set: OptionSet,
    training: Training,
) -> list[dict[str, Any]]:
    """One unit of work in a worker: a budget's methods or its variants."""
    from fidelity.methods import run_budget, run_variants

    run = run_budget if kind == "budget" else run_variants
    return run(prepared, budget, limit, option_set, training)


def _executor(workers: int) -> futures.Executor:
    """Worker processes (spawned: torch and fork do not mix), or, for one
    worker, this process itself (the test suite's reduced run)."""
    if workers == 1:
        _init_worker()
        return futures.ThreadPoolExecutor(1)
    context = multiprocessing.get_context("spawn")
    return futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def _formats(text: str, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise BadInput(f"--{what} is empty; give comma-separated format names, e.g. int2,int4")
    for name in names:
        try:
            get_format(name)
        except InvalidArgument as exc:
            raise BadInput(f"--{what}: {exc.message}") from None
    return names


def plan(args: argparse.Namespace) -> tuple[dict[str, OptionSet], list[Budget], dict[str, float]]:
    """The option sets, budgets and their limits; BadInput before any work."""
    from fidelity.allocate import budget_limit, cheapest
    from fidelity.prepare import INPUT_SHAPE, model_spec

    from bitmesh.models.layers import discover_layers
    from bitmesh.models.loading import load_model

    sets = dict(OPTION_SETS)
    sets["int"] = replace(
        sets["int"],
        weights=_formats(args.weight_formats, "weight-formats"),
        activations=_formats(args.activation_formats, "activation-formats"),
    )
    known = {b.name: b for b in BUDGETS}
    wanted = [n.strip() for n in args.budgets.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise BadInput(
            f"unknown budget {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}"
        )
    budgets = [known[n] for n in wanted]
    if args.max_bops is not None:
        budgets.append(Budget("custom_bops", "int", "bops", (), f"at most {args.max_bops:g} BOPs"))
    profiles = discover_layers(load_model(model_spec()), INPUT_SHAPE)
    limits = {}
    for budget in budgets:
        limit = args.max_bops if budget.name == "custom_bops" else budget_limit(profiles, budget)
        floor = cheapest(profiles, sets[budget.option_set], budget.axis)
        if limit < floor * (1 - 1e-9):
            raise BadInput(
                f"budget {budget.name} ({limit:.6g} {budget.axis}) is below every configuration "
                f"of the {budget.option_set} options: the cheapest costs {floor:.6g}"
            )
        limits[budget.name] = limit
    return sets, budgets, limits


def _result_line(rows: list[dict[str, Any]], prepared: list[dict[str, Any]], tightest: str) -> str:
    from fidelity.summary import (
        BETWEEN,
        RESULT_DIFFERENCES,
        RESULT_DIFFERENCES_BETWEEN,
        paired,
        spearman_by_format,
    )

    parts = []
    for where, table in ((tightest, RESULT_DIFFERENCES), (BETWEEN, RESULT_DIFFERENCES_BETWEEN)):
        for key, method, other, regime in table:
            value = paired(rows, where, regime, method, other)
            if value is not None:
                parts.append(f"{key}={value.mean:.3f}")
            elif where == tightest:
                parts.append(f"{key}=nan")
    spearman = spearman_by_format(prepared)
    parts.append(f"omega_spearman={spearman['int2'].mean:.3f}")
    parts.append(f"omega_spearman_int3={spearman['int3'].mean:.3f}")
    return "RESULT " + " ".join(parts)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    sets, budgets, limits = plan(args)
    training = Training() if args.scale == 1.0 else Training().scaled(args.scale)
    work = Path(args.work)
    (work / "weights").mkdir(parents=True, exist_ok=True)
    cache = StageCache(work / "stages")
    seeds = list(range(args.seeds))
    base = {
        "protocol": protocol.PROTOCOL_VERSION,
        "training": asdict(training),
        "sets": {k: asdict(v) for k, v in sets.items()},
    }
    prepared: dict[int, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    reused: list[str] = []
    with _executor(args.workers) as pool:
        pending: dict[futures.Future[Any], tuple[str, dict[str, Any]]] = {}

        def submit_units(seed: int) -> None:
            units = [("budget", b) for b in budgets]
            if not args.no_variants:
                units += [("variants", b) for b in budgets if b.name in protocol.VARIANT_BUDGETS]
            for kind, budget in units:
                inputs = base | {
                    "seed": seed,
                    "kind": kind,
                    "budget": asdict(budget),
                    "limit": limits[budget.name],
                }
                cached = cache.get("unit", inputs)
                if cached is not None:
                    rows.extend(cached["rows"])
                    reused.append(kind)
                    continue
                future = pool.submit(
                    _unit,
                    kind,
                    prepared[seed],
                    budget,
                    limits[budget.name],
                    sets[budget.option_set],
                    training,
                )
                pending[future] = ("unit", inputs)

        for seed in seeds:
            inputs = base | {"seed": seed}
            cached = cache.get("prepare", inputs)
            if cached is not None and Path(cached["weights"]).is_file():
                prepared[seed] = cached
                reused.append("prepare")
                submit_units(seed)
                continue
            future = pool.submit(
                _prepare, seed, training, str(work / "weights"), list(sets.values())
            )
            pending[future] = ("prepare", inputs)
        while pending:
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in done:
                stage, inputs = pending.pop(future)
                result = future.result()
                if stage == "prepare":
                    cache.put("prepare", inputs, result)
                    prepared[inputs["seed"]] = result
                    print(
                        f"seed {inputs['seed']}: FP32 {result['fp32']['accuracy']:.4f}", flush=True
                    )
                    submit_units(inputs["seed"])
                else:
                    cache.put("unit", inputs, {"rows": result})
                    rows.extend(result)
                    print(
                        f"seed {inputs['seed']} {inputs['kind']} {inputs['budget']['name']}: {len(result)} rows",
                        flush=True,
                    )

    if reused:
        print(f"resumed: {len(reused)} stages from the cache in {work}", flush=True)
    from fidelity import report
    from fidelity.summary import cells, spearman_by_format

    ordered = [prepared[s] for s in seeds]
    tightest = protocol.TIGHTEST if protocol.TIGHTEST in limits else budgets[0].name
    line = _result_line(rows, ordered, tightest)
    table = cells(rows)
    report.write(
        Path(args.report),
        rows=rows,
        cells=table,
        budgets=budgets,
        limits=limits,
        spearman=spearman_by_format(ordered),
        prepared=ordered,
        result_line=line,
        settings={"steps scale": args.scale, "workers": args.workers},
    )
    Path(args.rows).write_text(json.dumps({"rows": rows, "limits": limits}, indent=1))
    for cell in table:
        if cell["budget"] == tightest:
            iv = cell["accuracy"]
            print(
                f"{cell['method']:>14} {cell['regime']}: {iv.mean:6.2f} [{iv.low:6.2f}, {iv.high:6.2f}] cost {cell['cost'] / cell['limit']:.3f}"
            )
    print(f"report: {args.report}; total {time.perf_counter() - started:.0f} s")
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default=",".join(b.name for b in BUDGETS))
    parser.add_argument("--weight-formats", default=",".join(protocol.INT_WEIGHTS))
    parser.add_argument("--activation-formats", default=",".join(protocol.INT_ACTIVATIONS))
    parser.add_argument("--max-bops", type=float, default=None, help="an extra BOPs budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-variants", action="store_true", help="skip the LCPAQ variants")
    parser.add_argument("--work", default=str(REPO / ".bench-fidelity"), help="stage cache folder")
    parser.add_argument("--report", default=str(REPO / "docs" / "fidelity.md"))
    parser.add_argument("--rows", default=None, help="also write every row as JSON here")
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = os.path.join(args.work, "rows.json")
    if args.seeds < 1 or args.workers < 1:
        print("bench_fidelity: --seeds and --workers must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return run(args)
    except BadInput as exc:
        print(f"bench_fidelity: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
