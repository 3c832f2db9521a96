"""The format registry, its aliases, and parsing of quantization options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bitmesh.errors import InvalidArgument
from bitmesh.formats import (
    BLOCK_FORMATS,
    FORMATS,
    BlockRecipe,
    FormatKind,
    Granularity,
    QuantOption,
    format_from_spec,
    get_format,
    parse_option,
    parse_options,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


# METHODS.md section 1, copied by hand: (bits, exponent bias, largest finite value).
@pytest.mark.parametrize(
    ("name", "bits", "bias", "max_value"),
    [
        ("e5m2", 8, 15, 57344.0),
        ("e4m3", 8, 7, 448.0),
        ("e3m2", 6, 3, 28.0),
        ("e2m3", 6, 1, 7.5),
        ("e2m1", 4, 1, 6.0),
    ],
)
def test_fp_table_values(name: str, bits: int, bias: int, max_value: float) -> None:
    fmt = get_format(name)
    assert fmt.kind is FormatKind.FP
    assert (fmt.bits, fmt.bias, fmt.max_value) == (bits, bias, max_value)
    assert fmt.bits == 1 + fmt.exponent_bits + fmt.mantissa_bits
    assert name == f"e{fmt.exponent_bits}m{fmt.mantissa_bits}"
    assert fmt.min_normal == 2.0 ** (1 - bias)
    assert fmt.min_subnormal == 2.0 ** (1 - bias - fmt.mantissa_bits)


@pytest.mark.parametrize("name", ["e5m2", "e4m3", "e3m2", "e2m3", "e2m1"])
def test_fp_max_matches_the_bit_layout(name: str) -> None:
    """max_value re-derived from the layout: IEEE-like E5M2 reserves the
    all-ones exponent, E4M3fn only the all-ones mantissa in it, FP6/FP4
    reserve nothing."""
    fmt = get_format(name)
    top_exponent = (1 << fmt.exponent_bits) - 1
    top_mantissa = (1 << fmt.mantissa_bits) - 1
    if name == "e5m2":
        top_exponent -= 1
    elif name == "e4m3":
        top_mantissa -= 1
    expected = (1 + top_mantissa / 2**fmt.mantissa_bits) * 2.0 ** (top_exponent - fmt.bias)
    assert fmt.max_value == expected


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_formats(bits: int) -> None:
    signed = get_format(f"int{bits}")
    unsigned = get_format(f"uint{bits}")
    assert (signed.qmin, signed.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (unsigned.qmin, unsigned.qmax) == (0, 2**bits - 1)
    assert signed.max_value == signed.qmax and unsigned.max_value == unsigned.qmax
    assert signed.bits == unsigned.bits == bits
    assert signed.signed and not unsigned.signed
    assert signed.is_quantized and not signed.is_identity


def test_native_formats() -> None:
    assert {
        n: (f.bits, f.exponent_bits, f.mantissa_bits)
        for n, f in FORMATS.items()
        if f.kind is FormatKind.NATIVE
    } == {
        "bf16": (16, 8, 7),
        "fp16": (16, 5, 10),
        "fp32": (32, 8, 23),
    }
    assert get_format("fp16").max_value == 65504.0
    assert get_format("fp32").is_identity and not get_format("bf16").is_identity
    assert not any(get_format(n).is_quantized for n in ("bf16", "fp16", "fp32"))
    assert all(f.is_quantized for f in FORMATS.values() if f.kind is not FormatKind.NATIVE)


def test_registry_holds_exactly_the_documented_formats() -> None:
    expected = {f"int{b}" for b in range(2, 9)} | {f"uint{b}" for b in range(2, 9)}
    expected |= {"e5m2", "e4m3", "e3m2", "e2m3", "e2m1", "bf16", "fp16", "fp32"}
    assert set(FORMATS) == expected
    assert all(FORMATS[name].name == name for name in FORMATS)


def test_int_properties_refuse_float_formats() -> None:
    with pytest.raises(InvalidArgument):
        _ = get_format("e4m3").qmax
    with pytest.raises(InvalidArgument):
        _ = get_format("int8").min_normal


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("fp8_e4m3", "e4m3"),
        ("FP8E4M3", "e4m3"),
        ("e4m3fn", "e4m3"),
        ("float8_e4m3fn", "e4m3"),
        ("fp8_e5m2", "e5m2"),
        ("fp4", "e2m1"),
        ("fp4_e2m1", "e2m1"),
        ("E2M1", "e2m1"),
        ("INT4", "int4"),
        ("uint8", "uint8"),
        ("float32", "fp32"),
        ("FP32", "fp32"),
        ("bfloat16", "bf16"),
        ("BF16", "bf16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        (" fp16 ", "fp16"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert get_format(alias) is FORMATS[name]


@pytest.mark.parametrize("bad", ["int9", "int1", "e4m4", "fp8", "", "float8"])
def test_unknown_name_lists_known_names(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        get_format(bad)
    assert "int4" in info.value.message and "e4m3" in info.value.message


def test_format_from_spec() -> None:
    assert format_from_spec(FormatKind.INT, bits=4, signed=True) is FORMATS["int4"]
    assert format_from_spec("int", bits=8, signed=False) is FORMATS["uint8"]
    assert format_from_spec(FormatKind.FP, exponent_bits=4, mantissa_bits=3) is FORMATS["e4m3"]
    assert format_from_spec("FP", bits=4, exponent_bits=2, mantissa_bits=1) is FORMATS["e2m1"]
    assert format_from_spec(FormatKind.NATIVE, bits=32) is FORMATS["fp32"]
    assert format_from_spec(FormatKind.NATIVE, bits=16, exponent_bits=8) is FORMATS["bf16"]
    assert format_from_spec(FormatKind.NATIVE, bits=16, mantissa_bits=10) is FORMATS["fp16"]


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (FormatKind.INT, {"bits": 4}),  # int4 or uint4
        (FormatKind.NATIVE, {"bits": 16}),  # bf16 or fp16
        (FormatKind.FP, {"bits": 6}),  # e3m2 or e2m3
        (FormatKind.INT, {"bits": 16, "signed": True}),
        (FormatKind.FP, {"exponent_bits": 4, "mantissa_bits": 4}),
        (FormatKind.FP, {"bits": 6, "exponent_bits": 4, "mantissa_bits": 3}),
        (FormatKind.FP, {"exponent_bits": 4, "mantissa_bits": 3, "signed": False}),
        ("complex", {"bits": 8}),
    ],
)
def test_format_from_spec_rejects_ambiguous_or_unknown(
    kind: FormatKind | str, fields: dict
) -> None:
    with pytest.raises(InvalidArgument):
        format_from_spec(kind, **fields)


def test_parse_option_forms() -> None:
    int4, int8, e4m3 = FORMATS["int4"], FORMATS["int8"], FORMATS["e4m3"]
    assert parse_option("int4") == QuantOption(int4, int4, Granularity.PER_CHANNEL)
    assert parse_option("int4/int8") == QuantOption(int4, int8)
    assert parse_option(" int4 / uint8 :pt").activation is FORMATS["uint8"]
    assert parse_option("fp8_e4m3/e4m3:pt") == QuantOption(e4m3, e4m3, Granularity.PER_TENSOR)
    assert parse_option("int4:PC", Granularity.PER_TENSOR).granularity is Granularity.PER_CHANNEL
    assert parse_option("int4", Granularity.PER_TENSOR).granularity is Granularity.PER_TENSOR
    assert parse_option("int4:per_tensor").granularity is Granularity.PER_TENSOR


def test_option_keys_are_unambiguous_and_round_trip() -> None:
    options = [
        QuantOption(FORMATS[w], FORMATS[a], g)
        for w in ("int4", "int8", "e4m3", "bf16")
        for a in ("int8", "uint8", "e4m3", "fp32")
        for g in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)
    ]
    options += [
        QuantOption(get_format(w), get_format(a))
        for w in ("mxfp4", "nvfp4", "int4_g32", "int4_g32_zp")
        for a in ("int8", "mxfp8_e4m3", "nvfp4")
    ]
    keys = [o.key for o in options]
    assert len(set(keys)) == len(keys)
    assert all(parse_option(o.key) == o for o in options)
    assert QuantOption(FORMATS["int4"], FORMATS["int8"]).key == "int4/int8"
    assert (
        QuantOption(FORMATS["e4m3"], FORMATS["e4m3"], Granularity.PER_TENSOR).key == "e4m3/e4m3:pt"
    )


@pytest.mark.parametrize(
    "bad", ["int4/int8/int2", "int4/", "/int4", "int4:xx", "int4/foo", "uint4/int8"]
)
def test_parse_option_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_option(bad)


def test_parse_options() -> None:
    options = parse_options("int4, int8 ,e4m3/e4m3:pt,")
    assert [o.key for o in options] == ["int4/int4", "int8/int8", "e4m3/e4m3:pt"]
    with pytest.raises(InvalidArgument):
        parse_options(" , ")
    with pytest.raises(InvalidArgument):
        parse_options("int4,INT4/int4")


def test_values_are_frozen() -> None:
    with pytest.raises(AttributeError):
        FORMATS["int4"].bits = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        FORMATS["int4"] = FORMATS["int8"]  # type: ignore[index]


def test_formats_import_without_torch() -> None:
    """The solver uses this module and has no torch: importing it with torch
    made unimportable must work."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import bitmesh.formats as f\n"
        "assert f.get_format('int4').bits == 4\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


# --- block-scaled formats -------------------------------------------------------


def test_block_registry_names_every_documented_format() -> None:
    mx = {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"}
    groups = {
        f"int{b}_g{g}{s}{z}"
        for b in range(2, 9)
        for g in (32, 64, 128)
        for s in ("", "_fp32")
        for z in ("", "_zp")
    }
    assert set(BLOCK_FORMATS) == mx | {"nvfp4"} | groups
    assert not set(BLOCK_FORMATS) & set(FORMATS)
    for name in mx:
        block = BLOCK_FORMATS[name].block
        assert block is not None
        assert (block.recipe, block.block_size, block.scale_format) == (BlockRecipe.MX, 32, "e8m0")
    nv = BLOCK_FORMATS["nvfp4"]
    assert nv.element is FORMATS["e2m1"] and nv.block is not None
    assert (nv.block.block_size, nv.block.scale_format, nv.block.tensor_scale) == (16, "e4m3", True)


@pytest.mark.parametrize(
    ("name", "element", "emax"),
    [
        ("mxfp8_e4m3", "e4m3", 8),
        ("mxfp8_e5m2", "e5m2", 15),
        ("mxfp6_e3m2", "e3m2", 4),
        ("mxfp6_e2m3", "e2m3", 2),
        ("mxfp4", "e2m1", 2),
        ("mxint8", "int8", 0),
    ],
)
def test_mx_elements_and_emax_follow_the_spec(name: str, element: str, emax: int) -> None:
    fmt = get_format(name)
    assert fmt.element is FORMATS[element]
    assert fmt.bits == FORMATS[element].bits
    assert fmt.mx_emax == emax


def test_group_formats_describe_codes_scale_and_zero_point() -> None:
    sym = get_format("int4_g128")
    assert sym.element is FORMATS["int4"] and sym.block is not None
    assert (sym.block.block_size, sym.block.scale_format, sym.block.zero_point) == (
        128,
        "fp16",
        False,
    )
    asym = get_format("INT3-G64-FP32-ZP")
    assert asym.element is FORMATS["uint3"] and asym.block is not None
    assert (asym.block.scale_format, asym.block.zero_point) == ("fp32", True)
    assert get_format("int4_g32_fp16") is get_format("int4_g32")
    assert get_format("MXFP4_E2M1") is get_format("mxfp4")


@pytest.mark.parametrize(
    ("name", "shape", "bits"),
    [
        # (out, in, kh, kw): blocks run along `in` for each (out, kh, kw).
        ("mxfp4", (64, 64, 3, 3), 64 * 9 * 2 * 8),
        ("mxfp4", (64, 3, 7, 7), 64 * 49 * 1 * 8),  # partial block: a full scale
        ("nvfp4", (10, 512), 10 * 32 * 8 + 32),
        ("int4_g32", (10, 512), 10 * 16 * 16),
        ("int4_g128_zp", (10, 512), 10 * 4 * (16 + 4)),
        ("int8_g64_fp32", (10, 100), 10 * 2 * 32),
    ],
)
def test_overhead_bits_count_every_scale_and_zero_point(
    name: str, shape: tuple[int, ...], bits: int
) -> None:
    fmt = get_format(name)
    assert fmt.block is not None
    assert fmt.block.overhead_bits(shape, fmt.bits) == bits


def test_partial_blocks_are_padded_or_refused_with_what_divides() -> None:
    block = get_format("int4_g32").block
    assert block is not None
    assert (
        block.blocks_along(33) == 2 and block.blocks_along(32) == 1 and block.blocks_along(1) == 1
    )
    with pytest.raises(InvalidArgument, match=r"block size 32 .*; block sizes 16 divide"):
        block.blocks_along(48, allow_partial=False)
    with pytest.raises(InvalidArgument, match="no offered block size"):
        block.blocks_along(27, allow_partial=False)
    with pytest.raises(InvalidArgument, match="blocks run along dim 1"):
        block.block_count((512,))


def test_block_formats_fix_their_granularity() -> None:
    option = parse_option("mxfp4/e4m3")
    assert option.granularity is Granularity.PER_BLOCK
    assert QuantOption(
        get_format("nvfp4"), FORMATS["int8"], Granularity.PER_TENSOR
    ).granularity is (Granularity.PER_BLOCK)
    assert option.key == "mxfp4/e4m3" and parse_option(option.key) == option
    with pytest.raises(InvalidArgument, match="has its own block scales"):
        parse_option("mxfp4:pt")
    with pytest.raises(InvalidArgument, match="needs a block-scaled weight format"):
        QuantOption(FORMATS["int4"], FORMATS["int4"], Granularity.PER_BLOCK)
    # Asymmetric group codes are unsigned, and still valid weights.
    assert parse_option("int4_g32_zp/int8").weight.element is FORMATS["uint4"]


def test_unknown_names_explain_the_block_formats() -> None:
    with pytest.raises(InvalidArgument, match=r"int\{2..8\}_g\{32,64,128\}"):
        get_format("int4_g48")
    with pytest.raises(InvalidArgument):
        format_from_spec(FormatKind.FP, exponent_bits=2, mantissa_bits=1, bits=5)
    # Structured lookups never return a block format.
    assert format_from_spec(FormatKind.FP, exponent_bits=2, mantissa_bits=1) is FORMATS["e2m1"]
