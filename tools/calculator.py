"""A calculator the model can trust: exact rational arithmetic, math functions, never ``eval``.

Language models are poor at arithmetic and tempting to hand ``eval``. This module parses the
expression with :mod:`ast` and walks an explicit whitelist of node types — numbers, the
operators ``+ - * / // % **``, parentheses, named constants and calls to named math
functions. Anything else (attributes, subscripts, names outside the table, lambdas,
comprehensions, strings, keyword arguments) is refused before evaluation, so there is no
route to ``__import__``, dunder attributes or builtins.

Numbers are exact :class:`fractions.Fraction` values: decimal literals are read from their
source text (``0.1`` is exactly 1/10, not the nearest float), so ``0.1 + 0.2`` is ``0.3``.
Functions without exact results (``sin``, ``log``, ``sqrt(2)``) produce floats and the answer
is marked approximate. Sizes are bounded (expression length, node count, integer bits,
exponents, factorials) so ``9**9**9`` is refused instead of freezing the process.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from fractions import Fraction

from maestro import ToolRetry, tool

MAX_EXPRESSION_CHARS = 2000
MAX_NODES = 500
MAX_INT_BITS = 20_000
MAX_FACTORIAL = 2000

Number = Fraction | float


class CalculatorError(ValueError):
    """The expression is not allowed, too large, or mathematically undefined."""


def _as_float(x: Number) -> float:
    try:
        return float(x)
    except OverflowError as exc:
        raise CalculatorError("number too large for an approximate function") from exc


def _as_int(x: Number, what: str) -> int:
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    if isinstance(x, float) and x.is_integer():
        return int(x)
    raise CalculatorError(f"{what} needs whole numbers, got {format_number(x)}")


def _check_size(x: Number) -> Number:
    if isinstance(x, Fraction):
        if max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_INT_BITS:
            raise CalculatorError(f"intermediate result exceeds {MAX_INT_BITS} bits")
    elif math.isnan(x):
        raise CalculatorError("result is undefined (NaN)")
    return x


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("sqrt of a negative number")
    if isinstance(x, Fraction):
        num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num * num == x.numerator and den * den == x.denominator:
            return Fraction(num, den)
    return math.sqrt(_as_float(x))


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1:
        exp = exponent.numerator
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(exp) > MAX_INT_BITS and abs(base) != 1 and base != 0:
            raise CalculatorError(f"power too large (over {MAX_INT_BITS} bits)")
        if base == 0 and exp < 0:
            raise CalculatorError("division by zero (0 to a negative power)")
        return base**exp
    if base < 0:
        raise CalculatorError("fractional power of a negative number")
    try:
        return math.pow(_as_float(base), _as_float(exponent))
    except OverflowError as exc:
        raise CalculatorError("power too large") from exc


def _factorial(x: Number) -> Number:
    n = _as_int(x, "factorial")
    if not 0 <= n <= MAX_FACTORIAL:
        raise CalculatorError(f"factorial is limited to 0..{MAX_FACTORIAL}")
    return Fraction(math.factorial(n))


def _float_fn(fn: Callable[..., float]) -> Callable[..., Number]:
    def wrapped(*args: Number) -> Number:
        try:
            return fn(*(_as_float(a) for a in args))
        except (ValueError, OverflowError) as exc:
            raise CalculatorError(f"{fn.__name__}: {exc}") from exc

    return wrapped


def _int_fn(fn: Callable[..., int], name: str, limit: int = 10**6) -> Callable[..., Number]:
    def wrapped(*args: Number) -> Number:
        ints = [_as_int(a, name) for a in args]
        if any(abs(i) > limit for i in ints):
            raise CalculatorError(f"{name} arguments are limited to {limit}")
        return Fraction(fn(*ints))

    return wrapped


def _round(x: Number, digits: Number = Fraction(0)) -> Number:
    places = _as_int(digits, "round")
    if abs(places) > 100:
        raise CalculatorError("round to at most 100 places")
    return Fraction(round(Fraction(x), places)) if isinstance(x, Fraction) else round(x, places)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "abs": lambda x: abs(x),
    "round": _round,
    "floor": lambda x: Fraction(math.floor(x)),
    "ceil": lambda x: Fraction(math.ceil(x)),
    "trunc": lambda x: Fraction(math.trunc(x)),
    "min": lambda *xs: min(xs),
    "max": lambda *xs: max(xs),
    "factorial": _factorial,
    "gcd": _int_fn(math.gcd, "gcd", 10**100),
    "lcm": _int_fn(math.lcm, "lcm", 10**100),
    "comb": _int_fn(math.comb, "comb", 5000),
    "perm": _int_fn(math.perm, "perm", 5000),
    "isqrt": _int_fn(math.isqrt, "isqrt", 10**1000),
    "pow": _power,
    **{
        name: _float_fn(getattr(math, name))
        for name in (
            "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin", "acos", "atan",
            "atan2", "sinh", "cosh", "tanh", "degrees", "radians", "hypot", "cbrt",
        )
    },
}
CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b) if isinstance(a // b, int) else a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}


class _Evaluator:
    def __init__(self, source: str) -> None:
        self.source = source

    def eval(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            text = ast.get_source_segment(self.source, node) or repr(node.value)
            return _check_size(Fraction(text.replace("_", "")))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            value = self.eval(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitXor):
                raise CalculatorError("'^' is not a power here; write ** (e.g. 2**10)")
            op = _BINARY.get(type(node.op))
            if op is None:
                raise CalculatorError(f"operator {type(node.op).__name__} is not supported")
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
                raise CalculatorError("division by zero")
            return _check_size(op(left, right))
        if isinstance(node, ast.Name) and node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            fn = FUNCTIONS.get(node.func.id)
            if fn is None or node.keywords:
                raise CalculatorError(
                    f"unknown function {node.func.id!r} (or keyword arguments); "
                    f"available: {', '.join(sorted(FUNCTIONS))}"
                )
            args = [self.eval(arg) for arg in node.args]
            try:
                return _check_size(fn(*args))
            except TypeError as exc:
                raise CalculatorError(f"{node.func.id}: wrong number of arguments") from exc
        if isinstance(node, ast.Name):
            raise CalculatorError(f"unknown name {node.id!r}; constants: pi, e, tau")
        raise CalculatorError(f"{type(node).__name__} is not allowed in a calculation")


def safe_eval(expression: str) -> Number:
    """Evaluate an arithmetic expression exactly where possible. Raises CalculatorError."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not a valid expression: {exc.msg}") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    try:
        return _Evaluator(expression.strip()).eval(tree)
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(str(exc)) from exc


def format_number(value: Number) -> str:
    """Exact integers and terminating decimals as such; other fractions as ``p/q ≈ decimal``."""
    if isinstance(value, float):
        return f"≈ {value:.15g}"
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for prime in (2, 5):
        while den % prime == 0:
            den //= prime
    if den == 1:  # terminating decimal: print it exactly
        digits = 0
        scaled = value
        while scaled.denominator != 1:
            scaled *= 10
            digits += 1
        sign = "-" if scaled < 0 else ""
        text = str(abs(scaled.numerator)).rjust(digits + 1, "0")
        return f"{sign}{text[:-digits]}.{text[-digits:]}"
    return f"{value.numerator}/{value.denominator} ≈ {float(value):.15g}"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (fractions, big integers) or approximately.

    Supports + - * / // % ** and parentheses, the constants pi, e, tau, and functions such as
    sqrt, log, exp, sin, cos, round, floor, ceil, min, max, factorial, gcd, comb.

    Args:
        expression: For example "(1/3 + 0.25) * 12" or "sqrt(2) * pi".
    """
    try:
        return format_number(safe_eval(expression))
    except CalculatorError as exc:
        raise ToolRetry(f"calculator could not evaluate {expression!r}: {exc}") from exc
