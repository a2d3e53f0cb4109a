"""What Argo Rollouts and Flagger do with the canary templates, redone here for the tests.

Only the parts the templates in collector-config/canary/ use, each as the controller does it
(read from their sources at the pinned versions of collector-config/canary/crds.py):

- Argo Rollouts (utils/analysis/factory.go, utils/template/template.go): the template's args
  merged with the given ones (an arg without a value is an error), every ``{{args.NAME}}``
  (spaces inside the braces allowed) replaced in the metric's JSON with the value escaped as
  a Go string (ResolveQuotedArgs), an unknown tag an error.
- Argo's Prometheus provider: ``result`` is the list of the vector's values.
  utils/evaluate/evaluate.go: successCondition / failureCondition in expr-lang; without a
  failureCondition a measurement that is not successful failed; neither true is
  Inconclusive; an evaluation error (``result[0]`` of an empty result) is Error.
- Flagger (pkg/metrics/observers/render.go, pkg/controller/scheduler_metrics.go,
  pkg/metrics/providers/prometheus.go): the query is a Go template with the niladic
  functions name, namespace, target, service, ingress, route, interval and variables
  (a missing variable is an error); the value is the last sample of the result, none or
  NaN is "no values found", a failed check; thresholdRange min/max are inclusive.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

# --- Argo Rollouts -----------------------------------------------------------------------------

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)


class TemplateError(ValueError):
    """What the controller reports instead of running the metric."""


def argo_metrics(template: dict[str, Any], args: dict[str, str]) -> list[dict[str, Any]]:
    """The template's metrics with the args resolved as Argo resolves them."""
    values: dict[str, str | None] = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    for name, value in args.items():
        if name in values:  # MergeArgs ignores args the template does not declare
            values[name] = value
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise TemplateError(f"args.{missing[0]} was not resolved")
    # strconv.Quote without its quotes == a JSON string body for the values used here.
    quoted = {f"args.{k}": json.dumps(v)[1:-1] for k, v in values.items() if v is not None}

    def resolve(match: re.Match[str]) -> str:
        tag = match.group(1).strip()
        if tag not in quoted:
            raise TemplateError(f"failed to resolve {{{{{match.group(1)}}}}}")
        return quoted[tag]

    return [
        json.loads(_TAG.sub(resolve, json.dumps(metric))) for metric in template["spec"]["metrics"]
    ]


def argo_phase(metric: dict[str, Any], result: list[float]) -> str:
    """Successful, Failed, Inconclusive or Error for one measurement (EvaluateResult)."""
    success_expr = metric.get("successCondition", "")
    failure_expr = metric.get("failureCondition", "")
    try:
        success = bool(success_expr) and evaluate(success_expr, result)
        failure = bool(failure_expr) and evaluate(failure_expr, result)
    except ExprError:
        return "Error"
    if not success_expr and not failure_expr:
        return "Successful"
    if success_expr and not failure_expr:
        failure = not success
    elif failure_expr and not success_expr:
        success = not failure
    if failure:
        return "Failed"
    if not success:
        return "Inconclusive"
    return "Successful"


class ExprError(ValueError):
    """A compile or run error of expr-lang."""


_TOKENS = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[<>!()\[\],+\-*/])|(?P<name>[A-Za-z_]\w*))"
)


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKENS.match(text, position)
        if not match or match.end() == position:
            raise ExprError(f"unexpected {text[position:]!r}")
        tokens.append(match.group(match.lastgroup or "op"))
        position = match.end()
    return tokens


def evaluate(text: str, result: list[float]) -> bool:
    """An expr-lang condition over ``result`` (the subset the templates use: numbers,
    ``result``, ``len()``, ``isNaN()``, indexing, comparisons, ``&&``/``and``, ``||``/``or``,
    ``!``/``not``, + - * /, parentheses). Short-circuits like expr-lang."""
    parser = _Parser(_tokenize(text), {"result": list(result)})
    value = parser.expression()
    if parser.position != len(parser.tokens):
        raise ExprError(f"unexpected token {parser.tokens[parser.position]!r}")
    if not isinstance(value, bool):
        raise ExprError(f"expected bool, but got {type(value).__name__}")
    return value


@dataclass
class _Parser:
    tokens: list[str]
    env: dict[str, Any]
    position: int = 0
    skip: int = 0  # > 0 while parsing the unevaluated side of a short-circuit

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise ExprError(f"expected {expected or 'a token'}, got {token!r}")
        self.position += 1
        return token

    def expression(self) -> Any:
        left = self._and()
        while self._peek() in ("||", "or"):
            self._take()
            self._bool(left)
            self.skip += bool(left is True)
            right = self._and()
            self.skip -= bool(left is True)
            left = left if left is True else self._bool(right)
        return left

    def _and(self) -> Any:
        left = self._not()
        while self._peek() in ("&&", "and"):
            self._take()
            self._bool(left)
            self.skip += bool(left is False)
            right = self._not()
            self.skip -= bool(left is False)
            left = left if left is False else self._bool(right)
        return left

    def _bool(self, value: Any) -> Any:
        if not self.skip and not isinstance(value, bool):
            raise ExprError(f"invalid operation on {type(value).__name__}")
        return value

    def _not(self) -> Any:
        if self._peek() in ("!", "not"):
            self._take()
            return self.skip > 0 or not self._bool(self._not())
        return self._comparison()

    def _comparison(self) -> Any:
        left = self._sum()
        operator = self._peek()
        if operator not in ("==", "!=", "<", "<=", ">", ">="):
            return left
        self._take()
        right = self._sum()
        if self.skip:
            return False
        for side in (left, right):
            if operator not in ("==", "!=") and not isinstance(side, (int, float)):
                raise ExprError(f"invalid operation {operator} on {type(side).__name__}")
        return {
            "==": lambda: left == right,
            "!=": lambda: left != right,
            "<": lambda: left < right,
            "<=": lambda: left <= right,
            ">": lambda: left > right,
            ">=": lambda: left >= right,
        }[operator]()

    def _sum(self) -> Any:
        value = self._product()
        while self._peek() in ("+", "-"):
            operator, right = self._take(), self._product()
            if not self.skip:
                value = value + right if operator == "+" else value - right
        return value

    def _product(self) -> Any:
        value = self._unary()
        while self._peek() in ("*", "/"):
            operator, right = self._take(), self._unary()
            if not self.skip:
                # expr-lang's / is float division; x/0 is ±Inf or NaN, not an error.
                value = value * right if operator == "*" else _divide(value, right)
        return value

    def _unary(self) -> Any:
        if self._peek() == "-":
            self._take()
            value = self._unary()
            return 0 if self.skip else -value
        return self._postfix()

    def _postfix(self) -> Any:
        value = self._primary()
        while self._peek() == "[":
            self._take()
            index = self.expression()
            self._take("]")
            if self.skip:
                continue
            if not isinstance(value, list) or not isinstance(index, int):
                raise ExprError("cannot index")
            if not -len(value) <= index < len(value):
                raise ExprError(f"index out of range: {index} (array length is {len(value)})")
            value = value[index]
        return value

    def _primary(self) -> Any:
        token = self._take()
        if token == "(":
            value = self.expression()
            self._take(")")
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if token in ("true", "false"):
            return token == "true"
        if token in ("len", "isNaN"):
            self._take("(")
            argument = self.expression()
            self._take(")")
            if self.skip:
                return 0
            if token == "len":
                if not isinstance(argument, list):
                    raise ExprError("invalid argument for len")
                return len(argument)
            return math.isnan(float(argument))
        if token in self.env:
            return self.env[token]
        raise ExprError(f"unknown name {token}")


def _divide(left: float, right: float) -> float:
    if right == 0:
        return math.nan if left == 0 else math.copysign(math.inf, left)
    return left / right


# --- Flagger -----------------------------------------------------------------------------------

_FLAGGER_TAG = re.compile(r"\{\{\s*([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?\s*\}\}")
_FUNCTIONS = ("name", "namespace", "target", "service", "ingress", "route", "interval")


def flagger_render(query: str, model: dict[str, Any]) -> str:
    """Flagger's RenderQuery for ``{{ fn }}`` and ``{{ variables.key }}`` (missingkey=error).

    ``model`` holds the niladic functions' values and ``variables`` (a dict).
    """
    if "{{" in _FLAGGER_TAG.sub("", query):
        raise TemplateError(f"template parsing failed: unsupported tag in {query!r}")

    def render(match: re.Match[str]) -> str:
        function, key = match.group(1), match.group(2)
        if function == "variables" and key is not None:
            variables = model.get("variables") or {}
            if key not in variables:
                raise TemplateError(f'template excution failed: map has no entry for key "{key}"')
            return str(variables[key])
        if function in _FUNCTIONS and key is None:
            return str(model[function])
        raise TemplateError(f'template parsing failed: function "{function}" not defined')

    return re.sub(r"\s+", " ", _FLAGGER_TAG.sub(render, query))  # trimQuery


def flagger_value(result: list[dict[str, Any]]) -> float | None:
    """The value Flagger takes from an instant query's vector: the last one; None for none/NaN."""
    value = None
    for sample in result:
        value = float(sample["value"][1])
    return None if value is None or math.isnan(value) else value


def flagger_passes(value: float | None, threshold_range: dict[str, float]) -> bool:
    if value is None:  # ErrNoValuesFound: "Halt advancement", a failed check
        return False
    low, high = threshold_range.get("min"), threshold_range.get("max")
    return not ((low is not None and value < low) or (high is not None and value > high))
