"""The calculator computes exactly and refuses everything that is not arithmetic."""

from __future__ import annotations

import time

import pytest

from maestro import ToolContext, ToolRetry
from tools.calculator import CalculatorError, calculator, format_number, safe_eval


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0.1 + 0.2", "0.3"),
        ("1/3 + 1/6", "0.5"),
        ("1/3", "1/3 ≈ 0.333333333333333"),
        ("2**100", "1267650600228229401496703205376"),
        ("(1/3 + 0.25) * 12", "7"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("sqrt(16/9)", "4/3 ≈ 1.33333333333333"),
        ("factorial(20)", "2432902008176640000"),
        ("gcd(12, 18) + lcm(4, 6)", "18"),
        ("round(2.675, 2)", "2.68"),  # exact decimal: no binary-float surprise
        ("1_000 * 3", "3000"),
        ("1e3 / 8", "125"),
        ("2**-2", "0.25"),
        ("-0.05 * 3", "-0.15"),
    ],
)
def test_exact_results(expression: str, expected: str) -> None:
    assert format_number(safe_eval(expression)) == expected


def test_approximate_functions() -> None:
    assert safe_eval("sqrt(2)") == pytest.approx(2**0.5)
    assert safe_eval("sin(pi / 2)") == pytest.approx(1.0)
    assert safe_eval("log(e)") == pytest.approx(1.0)
    assert format_number(safe_eval("sqrt(2)")).startswith("≈ 1.41421356237")


@pytest.mark.parametrize(
    "attack",
    [
        "__import__('os').system('id')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "eval('1+1')",
        "exec('import os')",
        "lambda: 1",
        "[x for x in (1, 2)]",
        "(1).__class__",
        "'a' * 10",
        "f'{1}'",
        "1 if 1 else 2",
        "globals()",
        "sqrt.__globals__",
        "x",
        "print(1)",
        "round(2.5, ndigits=1)",
        "(lambda: __builtins__)()",
        "1; import os",
        "[1, 2][0]",
        "2 ^ 10",
    ],
)
def test_code_injection_is_refused(attack: str) -> None:
    with pytest.raises(CalculatorError):
        safe_eval(attack)


@pytest.mark.parametrize(
    "bomb",
    ["9**9**9", "factorial(10**6)", "2**(2**40)", "10**100000", "1" * 3000, "comb(10**9, 5)"],
)
def test_resource_bombs_are_refused_quickly(bomb: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CalculatorError):
        safe_eval(bomb)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("bad", ["1/0", "5 % 0", "sqrt(-1)", "log(0)", "(-8) ** (1/3)", "1 +"])
def test_math_errors_are_clear(bad: str) -> None:
    with pytest.raises(CalculatorError):
        safe_eval(bad)


async def test_tool_returns_text_and_asks_for_retry_on_bad_input() -> None:
    ctx = ToolContext(run_id="r", step_id="s", idempotency_key="k")
    assert calculator.name == "calculator"
    assert await calculator.call({"expression": "0.1 + 0.2"}, ctx) == "0.3"
    with pytest.raises(ToolRetry, match="not allowed"):
        await calculator.call({"expression": "[1][0]"}, ctx)
