"""The benchmark's protocol as data: option sets, budgets, methods, training.

Everything here was fixed before the first result was seen (see the
docstring of ``bench_fidelity.py``); a later change is listed, with its
reason, in ``docs/fidelity.md``. ``PROTOCOL_VERSION`` keys the stage cache,
so a changed protocol never reuses results measured under an older one.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 2

#: Weight formats in order of cost: "one step above" raises a weight format
#: to the next one in its list.
INT_WEIGHTS = ("int2", "int3", "int4", "int8")
INT_ACTIVATIONS = ("int4", "int8")
FP_WEIGHTS = ("e2m1", "e3m2", "e4m3")
FP_ACTIVATIONS = ("e2m1", "e4m3")


@dataclass(frozen=True)
class OptionSet:
    """Weight formats x activation formats, per-channel weight scales."""

    name: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]

    def option_keys(self) -> tuple[str, ...]:
        return tuple(f"{w}/{a}" for w in self.weights for a in self.activations)

    def step_up(self, key: str) -> str | None:
        """The same configuration with its weight format one step up (None at the top)."""
        weight, activation = key.split("/")
        index = self.weights.index(weight)
        if index + 1 == len(self.weights):
            return None
        return f"{self.weights[index + 1]}/{activation}"


INT_SET = OptionSet("int", INT_WEIGHTS, INT_ACTIVATIONS)
FP_SET = OptionSet("fp", FP_WEIGHTS, FP_ACTIVATIONS)
OPTION_SETS = {s.name: s for s in (INT_SET, FP_SET)}


@dataclass(frozen=True)
class Budget:
    """A budget as the cost of uniform configurations on one axis.

    ``anchors`` are uniform option keys; the limit is the mean of their
    costs (one anchor: exactly its cost; two: halfway between them).
    """

    name: str
    option_set: str
    axis: str  # "bops" or "size"
    anchors: tuple[str, ...]
    label: str


BUDGETS: tuple[Budget, ...] = (
    Budget("bops_w3a4", "int", "bops", ("int3/int4",), "BOPs of uniform W3A4"),
    Budget("size_int3", "int", "size", ("int3/int8",), "weight bytes of uniform INT3"),
    Budget(
        "bops_mid",
        "int",
        "bops",
        ("int2/int8", "int4/int8"),
        "BOPs halfway between uniform W2A8 and W4A8",
    ),
    Budget("fp_bops", "fp", "bops", ("e3m2/e2m1",), "BOPs of uniform E3M2 weights, E2M1 acts"),
    # Added in protocol v2 (see PROTOCOL_CHANGES).
    Budget(
        "bops_w2_w3",
        "int",
        "bops",
        ("int2/int4", "int3/int4"),
        "BOPs halfway between uniform W2A4 and W3A4 (no uniform point)",
    ),
)
BUDGET_NAMES = tuple(b.name for b in BUDGETS)
#: The tightest budget: the RESULT line's differences are measured here.
TIGHTEST = "bops_w3a4"

#: Methods compared at every budget, in the report's order.
METHODS = ("lcpaq", "fliqs", "uniform", "uniform_above", "random", "shuffled")
#: Variants of LCPAQ tried at the tightest budget to find where it loses.
VARIANTS = (
    "lcpaq_act",
    "lcpaq_pt",
    "uniform_pt",
    "lcpaq_long",
    "uniform_long",
    "lcpaq_measured",
)
#: Budgets the variants run at (v1: the tightest only).
VARIANT_BUDGETS = (TIGHTEST, "bops_w2_w3")
REGIMES = ("ptq", "qat")

RANDOM_CONFIGS = 5
RANDOM_WINDOW = 0.02  # random configurations cost within 2 % below the budget


@dataclass(frozen=True)
class Training:
    """Steps and rates shared by every run of a regime."""

    fp32_steps: int = 300
    fp32_lr: float = 0.05
    qat_steps: int = 150
    qat_lr: float = 0.01
    long_qat_steps: int = 450
    calibration_batches: int = 8
    distill_alpha: float = 0.95
    distill_temperature: float = 6.0
    search_warmup: float = 0.1
    trace_batches: int = 2
    trace_batch_size: int = 128

    def scaled(self, factor: float) -> Training:
        """Fewer steps for the reduced run the test suite makes (never the protocol)."""
        return Training(
            fp32_steps=max(10, int(self.fp32_steps * factor)),
            qat_steps=max(5, int(self.qat_steps * factor)),
            long_qat_steps=max(10, int(self.long_qat_steps * factor)),
            calibration_batches=max(1, int(self.calibration_batches * factor)),
        )


#: Changes made to this protocol after results were seen, with the reason;
#: the report lists them.
PROTOCOL_CHANGES: tuple[str, ...] = (
    "v2 adds the budget bops_w2_w3 (halfway between uniform W2A4 and W3A4) and runs the "
    "variants there too. Why: with INT3 in the option set, every v1 integer budget fell "
    "exactly on a uniform configuration (W3A4, INT3, and the W2A8-W4A8 midpoint is uniform "
    "W3A8), so v1 never tested a budget a uniform format cannot spend, which is where a mix "
    "can win at equal cost. v1's budgets, methods and RESULT keys are unchanged; the new "
    "budget's differences are extra RESULT keys (suffix _w2w3).",
    "v2 adds the variant lcpaq_measured: the ILP minimises each layer's measured loss "
    "increase at each option (that layer alone quantized and calibrated, cross-entropy on the "
    "256 training images of the traces, never the test split) instead of Omega. Why: v1's "
    "per-layer check showed Omega ranking the layers only loosely (Spearman 0.53 at INT2, "
    "0.23 at INT3) and underestimating the INT2 loss increase 3-20x, so the ILP objective "
    "was the candidate to test.",
)
