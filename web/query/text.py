"""The text filter language, `status:"error" AND name~"train"`: its grammar, a parser to the tree,
and the decoding of its quoted strings."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from web.query.tree import Condition, Expr, Logical

TEXT_GRAMMAR = """
expr      := and_expr (OR and_expr)*
and_expr  := unary (AND? unary)*            -- juxtaposition is AND; AND binds tighter than OR
unary     := "-" atom | atom                -- "-" negates
atom      := field IN list | field NOT IN list | field OP value | "(" expr ")"
field     := NAME "[" STRING "]" | NAME ("." NAME)*       -- a["k"] is the field a.k
OP        := ":" (equals) | "~" (contains, any case) | ">=" | ">" | "<=" | "<"
value     := null | STRING | NUMBER
list      := "[" "]" | "[" value ("," value)* "]"
NAME      := [a-zA-Z_][a-zA-Z0-9_]*
NUMBER    := -?[0-9]+(.[0-9]+)?
STRING    := a double-quoted string with Python escapes (\\" \\\\ \\n \\t \\uXXXX ...)
"""
# Keywords (AND, OR, IN, NOT, null) are case-insensitive and, wherever the grammar accepts one,
# tried before a name, with no word boundary: the reference's lexer works so (`a:"x" order:"y"`
# reads as `a:"x" OR der:"y"`), and so does this one. Whitespace separates tokens only.

_TOKENS: dict[str, re.Pattern[str]] = {
    "AND": re.compile(r"AND", re.IGNORECASE),
    "OR": re.compile(r"OR", re.IGNORECASE),
    "IN": re.compile(r"IN", re.IGNORECASE),
    "NOT": re.compile(r"NOT", re.IGNORECASE),
    "NULL": re.compile(r"null", re.IGNORECASE),
    "NAME": re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*"),
    "NUMBER": re.compile(r"-?[0-9]+(?:\.[0-9]+)?"),
    "STRING": re.compile(r'"(?:[^"\\]|\\.)*"'),
    **{
        op: re.compile(re.escape(op))
        for op in (">=", "<=", ">", "<", ":", "~", "(", ")", "[", "]", ",", ".", "-")
    },
}
_BLANK = re.compile(r"[ \t\f\r\n]*")
_OPERATORS = {":": "$eq", "~": "$like", ">=": "$gte", ">": "$gt", "<=": "$lte", "<": "$lt"}
_AFTER_FIELD = (*_OPERATORS, "IN", "NOT")
_UNARY_START = ("-", "NAME", "(")
_AFTER_UNARY = ("AND", "OR", *_UNARY_START, ")", "END")
_VALUE = ("NULL", "STRING", "NUMBER")


class TextFilterError(ValueError):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


class _Text:
    """A recursive-descent parser for TEXT_GRAMMAR that reads each token in the context the grammar
    gives it (what may come next), as the reference's LALR parser with its contextual lexer does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Expr:
        expr = self._or()
        self._take(("END",))
        return expr

    def _peek(self, accepted: tuple[str, ...]) -> tuple[str, str, int]:
        start = _BLANK.match(self.text, self.pos)
        pos = start.end() if start else self.pos
        if pos == len(self.text):
            if "END" in accepted:
                return "END", "", pos
            raise TextFilterError(pos, "unexpected end of filter")
        for kind in _TOKENS:  # keywords first, then names and literals, then `>=` before `>`
            if kind in accepted:
                match = _TOKENS[kind].match(self.text, pos)
                if match:
                    return kind, match.group(), match.end()
        expected = ", ".join("end" if kind == "END" else kind for kind in accepted)
        raise TextFilterError(pos, f"unexpected {self.text[pos : pos + 12]!r} (expected {expected})")

    def _take(self, accepted: tuple[str, ...]) -> tuple[str, str]:
        kind, text, end = self._peek(accepted)
        self.pos = end
        return kind, text

    def _or(self) -> Expr:
        items = [self._and()]
        while self._peek(_AFTER_UNARY)[0] == "OR":
            self._take(("OR",))
            items.append(self._and())
        return items[0] if len(items) == 1 else Logical("$or", tuple(items))

    def _and(self) -> Expr:
        items = [self._unary()]
        while True:
            kind = self._peek(_AFTER_UNARY)[0]
            if kind == "AND":
                self._take(("AND",))
            elif kind not in _UNARY_START:
                break
            items.append(self._unary())
        return items[0] if len(items) == 1 else Logical("$and", tuple(items))

    def _unary(self) -> Expr:
        if self._peek(_UNARY_START)[0] == "-":
            self._take(("-",))
            return Logical("$not", (self._atom(),))
        return self._atom()

    def _atom(self) -> Expr:
        kind, name = self._take(("NAME", "("))
        if kind == "(":
            expr = self._or()
            self._take((")",))
            return expr
        field = self._field(name)
        kind, token = self._take(_AFTER_FIELD)
        if kind in ("IN", "NOT"):
            if kind == "NOT":
                self._take(("IN",))
            op = "$in" if kind == "IN" else "$nin"
            return Condition(field, op, self._list(), (field, op))
        op = _OPERATORS[token]
        return Condition(field, op, self._value(self._take(_VALUE)), (field, op))

    def _field(self, name: str) -> str:
        kind = self._peek(("[", ".", *_AFTER_FIELD))[0]
        if kind == "[":
            self._take(("[",))
            key = unquote(self._take(("STRING",))[1])
            self._take(("]",))
            return f"{name}.{key}"
        parts = [name]
        while kind == ".":
            self._take((".",))
            parts.append(self._take(("NAME",))[1])
            kind = self._peek((".", *_AFTER_FIELD))[0]
        return ".".join(parts)

    def _list(self) -> list[Any]:
        self._take(("[",))
        if self._peek(("]", *_VALUE))[0] == "]":
            self._take(("]",))
            return []
        items = [self._value(self._take(_VALUE))]
        while self._take((",", "]"))[0] == ",":
            items.append(self._value(self._take(_VALUE)))
        return items

    @staticmethod
    def _value(token: tuple[str, str]) -> Any:
        kind, text = token
        if kind == "NULL":
            return None
        if kind == "STRING":
            return unquote(text)
        return float(text) if "." in text else int(text)


def parse_text(text: str) -> Expr:
    """A text filter (TEXT_GRAMMAR) as a tree; TextFilterError when it does not parse."""
    text = text.strip()
    if not text:
        raise TextFilterError(0, "empty filter")
    return _Text(text).parse()


_SIMPLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_OCTAL = re.compile(r"[0-7]{1,3}")
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def unquote(token: str) -> str:
    """A STRING token's text: its escapes decoded as a Python string literal's. When the token is not
    a valid Python literal (a raw line break, a NUL, a bad `\\x`/`\\u`/`\\N` escape), the reference
    falls back to dropping the quotes and turning `\\"` into `"`; so does this."""
    try:
        return _decode(token[1:-1])
    except (ValueError, KeyError):  # KeyError: an unknown \N{name}
        return token[1:-1].replace('\\"', '"')


def _decode(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char in "\r\n\x00":
            raise ValueError("not a one-line string")
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]  # a token never ends in a lone backslash
        i += 2
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
        elif nxt in "\r\n":  # a backslash and a line break: both are left out
            i += 1 if nxt == "\r" and body[i : i + 1] == "\n" else 0
        elif nxt in _HEX_DIGITS:
            digits = body[i : i + _HEX_DIGITS[nxt]]
            if len(digits) != _HEX_DIGITS[nxt] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("truncated escape")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise ValueError("escape out of range")
            out.append(chr(code))
            i += len(digits)
        elif nxt == "N" and body[i : i + 1] == "{" and "}" in body[i:]:
            end = body.index("}", i)
            out.append(unicodedata.lookup(body[i + 1 : end]))
            i = end + 1
        elif nxt == "N":
            raise ValueError("malformed \\N escape")
        elif octal := _OCTAL.match(body, i - 1):
            out.append(chr(int(octal.group(), 8)))
            i = octal.end()
        else:
            out.append("\\" + nxt)  # unknown escapes stay as written
    return "".join(out)
