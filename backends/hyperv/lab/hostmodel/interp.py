"""A deliberately small PowerShell interpreter over tree-sitter-powershell.

The script is parsed with tree-sitter-powershell; any ERROR/MISSING node is a
parse error, and any node type or construct not listed in the module README is
refused with :class:`UnsupportedConstruct` before anything executes (the whole
script is checked first, so a wrong script never half-runs).
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import tree_sitter as ts
import tree_sitter_powershell as tsp

from .model import HostModel, HyperVError
from .values import ErrorRecord, Hashtable, PSEnum, PSObject, to_string, truthy

_LANG = ts.Language(tsp.language())


def parse(script: str) -> ts.Tree:
    return ts.Parser(_LANG).parse(script.encode("utf-8"))


def syntax_errors(script: str, tree: ts.Tree | None = None) -> list[str]:
    """Return a description of every ERROR / MISSING node (empty list: parses cleanly)."""
    out: list[str] = []
    tree = tree or parse(script)

    def walk(n: ts.Node) -> None:
        if n.type == "ERROR" or n.is_missing:
            r, c = n.start_point
            what = "missing " + n.type if n.is_missing else "unexpected " + repr(n.text.decode("utf-8", "replace")[:40])
            out.append(f"line {r + 1} char {c + 1}: {what}")
        for ch in n.children:
            walk(ch)
    walk(tree.root_node)
    return out


class ScriptError(Exception):
    """The script was refused before execution (syntax error or unsupported construct)."""


class UnsupportedConstruct(ScriptError):
    pass


class _Terminating(Exception):
    def __init__(self, record: ErrorRecord):
        self.record = record


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Killed(BaseException):
    """The PowerShell process ended by the lab after a number of statements (Interpreter.stop_after): not a PowerShell
    error, so no catch or finally block of the script sees it."""


@dataclass
class RunResult:
    stdout: str
    errors: list[ErrorRecord] = field(default_factory=list)
    exit_code: int = 0
    # statements run (Interpreter.statements); killed: the run was ended after stop_after of them
    statements: int = 0
    killed: bool = False

    @property
    def stderr(self) -> str:
        return "\n".join(e.format() for e in self.errors)


# -- the host's PowerShell killed mid-script: a MODEL of the failure, assumed (no published output of it) ----------------
# A real host's powershell.exe (or the WinRM shell host above it) can die in the middle of a script: ended by an admin
# (Stop-Process, taskkill), by the WinRM service's quotas, or by the host going down. Windows ends a process with
# TerminateProcess, which "is used to unconditionally cause a process to exit" and "stops execution of all threads
# within the process" (Microsoft's reference page of TerminateProcess, processthreadsapi.h): so no later statement of
# the script runs, no catch or finally block either, and what the cmdlets already did on the host stays. The lab models
# it as the script stopped after its first `stop_after` statements (pipelines, counted as they run, loops included):
# every cmdlet of the model is one host change, so stopping between statements gives every state a death mid-script
# can leave -- except a cmdlet cut in the middle of its own work, which the model does not split (assumed atomic, as
# Set-VM's settings change is treated in backends/hyperv/scripts.py). What the client then receives is assumed too: the
# command ends with what the script had printed so far on stdout, nothing on stderr, and KILLED_EXIT_CODE (the exit
# code is whatever the killer passed to TerminateProcess: "The exit code to be used by the process", the same page;
# 1 is what taskkill /F gives, assumed, not verified against a published output).
KILLED_EXIT_CODE = 1


# Expression wrapper node types that simply forward to their single named child.
_PASS = {"logical_expression", "bitwise_expression", "comparison_expression", "additive_expression",
         "multiplicative_expression", "format_expression", "range_expression", "array_literal_expression",
         "unary_expression", "argument_expression", "logical_argument_expression",
         "bitwise_argument_expression", "comparison_argument_expression", "additive_argument_expression",
         "multiplicative_argument_expression", "format_argument_expression", "range_argument_expression",
         "left_assignment_expression", "key_expression"}

_STATEMENTS = {"pipeline", "empty_statement", "try_statement", "if_statement", "foreach_statement",
               "flow_control_statement"}

_ALLOWED_NODES = _PASS | _STATEMENTS | {
    "program", "statement_list", "statement_block", "assignment_expression", "assignement_operator",
    "pipeline_chain", "command", "command_name", "command_elements", "command_parameter",
    "command_argument_sep", "generic_token", "variable", "string_literal", "verbatim_string_characters",
    "expandable_string_literal", "verbatim_here_string_characters", "integer_literal",
    "decimal_integer_literal", "hexadecimal_integer_literal", "real_literal", "array_expression",
    "hash_literal_expression", "hash_literal_body", "hash_entry", "simple_name", "parenthesized_expression",
    "member_access", "member_name", "element_access", "invokation_expression", "argument_list",
    "argument_expression_list", "type_literal", "type_spec", "type_name", "type_identifier",
    "expression_with_unary_operator", "cast_expression", "comparison_operator", "catch_clauses",
    "catch_clause", "finally_clause", "elseif_clauses", "elseif_clause", "else_clause", "comment",
    "sub_expression",
}

# anonymous tokens allowed inside each operator node (anything else, e.g. -f, .., -band, -join, is refused)
_OP_NODES = {
    "logical_expression": {"-and", "-or"}, "logical_argument_expression": {"-and", "-or"},
    "bitwise_expression": set(), "bitwise_argument_expression": set(),
    "additive_expression": {"+", "-"}, "additive_argument_expression": {"+", "-"},
    "multiplicative_expression": {"*", "/", "%"}, "multiplicative_argument_expression": {"*", "/", "%"},
    "format_expression": set(), "format_argument_expression": set(),
    "range_expression": set(), "range_argument_expression": set(),
    "array_literal_expression": {","},
    "expression_with_unary_operator": {"-not", "!", "-", "+"},
}
_CMP_OPS = {"-eq", "-ne", "-gt", "-ge", "-lt", "-le", "-like", "-notlike", "-contains", "-notcontains",
            "-in", "-notin", "-ieq", "-ine"}
_CASTS = {"int", "int32", "long", "int64", "uint32", "uint64", "string", "bool", "pscustomobject",
          "ordered", "array", "object[]", "double"}
_CAST_RANGES = {"int": (-2**31, 2**31 - 1), "int32": (-2**31, 2**31 - 1), "long": (-2**63, 2**63 - 1),
                "int64": (-2**63, 2**63 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}
_STATIC = {"text.encoding", "system.text.encoding", "convert", "system.convert"}
_METHODS = {"tostring", "substring", "lastindexof", "indexof", "startswith", "endswith", "toupper", "tolower",
            "trim", "split", "replace", "containskey", "getstring", "frombase64string", "contains"}
_NUM_RE = re.compile(r"^(0x[0-9a-f]+|\d+(\.\d+)?)(kb|mb|gb|tb|pb)?$", re.I)
_MULT = {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4, "pb": 1024 ** 5}


def parse_number(text: str) -> int | float | None:
    m = _NUM_RE.match(text)
    if not m:
        return None
    base = m.group(1)
    val: int | float = int(base, 16) if base.lower().startswith("0x") else (float(base) if "." in base else int(base))
    if m.group(3):
        val = val * _MULT[m.group(3).lower()]
        if isinstance(val, float) and val == int(val):
            val = int(val)
    return val


def _t(n: ts.Node) -> str:
    return n.text.decode("utf-8")


def _named(n: ts.Node) -> list[ts.Node]:
    return [c for c in n.children if c.is_named and c.type != "comment"]


def _verbatim(text: str) -> str:
    body = text[1:-1]
    # single-quoted: '' -> '; PowerShell also treats curly quotes as quotes
    return re.sub("(['\u2018\u2019\u201a\u201b])(['\u2018\u2019\u201a\u201b])", r"\1", body)


class Interpreter:
    """Runs one script against a :class:`HostModel`."""

    def __init__(self, model: HostModel, cmdlets: dict[str, Any] | None = None, stop_after: int | None = None):
        from .cmdlets import CMDLETS
        self.model = model
        self.cmdlets = cmdlets if cmdlets is not None else CMDLETS
        # the lab's model of the host's PowerShell killed mid-script (see KILLED_EXIT_CODE): None runs the whole script
        self.stop_after = stop_after
        self.statements = 0
        self.killed = False
        self.vars: dict[str, Any] = {"erroractionpreference": "Continue"}
        self.errors: list[ErrorRecord] = []
        self.src_lines: list[str] = []
        self.last_ok = True

    # ------------------------------------------------------------------ entry
    def run(self, script: str) -> RunResult:
        tree = parse(script)
        errs = syntax_errors(script, tree)
        if errs:
            raise ScriptError("syntax error: " + "; ".join(errs[:5]))
        self._validate(tree.root_node)
        self.src_lines = script.split("\n")
        out: list[Any] = []
        code = 0
        with self.model.lock:
            try:
                self._exec_list(tree.root_node, out)
                code = 0 if self.last_ok else 1
            except _Terminating as t:
                self.errors.append(t.record)
                code = 1
            except _Exit as e:
                code = e.code
            except (_Break, _Continue):
                code = 0
            except _Killed:
                # nothing more runs, nothing is written to stderr: the process is gone (assumed, see KILLED_EXIT_CODE)
                text = "".join(_format_out(x) + "\n" for x in out)
                return RunResult(text, [], KILLED_EXIT_CODE, self.statements, killed=True)
        text = "".join(_format_out(x) + "\n" for x in out)
        return RunResult(text, self.errors, code, self.statements)

    # ------------------------------------------------------------------ checks
    def _validate(self, n: ts.Node) -> None:
        if not n.is_named:
            return
        if n.type not in _ALLOWED_NODES:
            raise self._unsupported(n, f"construct '{n.type}'")
        if n.type == "command_name" and not _t(n).strip():
            r, c = n.start_point
            raise ScriptError(f"syntax error: line {r + 1} char {c + 1}: missing expression")
        if n.type == "try_statement" and not any(c.type in ("catch_clauses", "finally_clause") for c in n.children):
            r, c = n.start_point
            raise ScriptError(f"syntax error: line {r + 1} char {c + 1}: The Try statement is missing its Catch or "
                              "Finally block.")
        if n.type == "expandable_string_literal" or n.type == "expandable_here_string_literal":
            raw = _t(n)
            if "$" in raw or "`" in raw or n.named_child_count:
                raise self._unsupported(n, "double-quoted string with interpolation or escapes (use single quotes)")
        if n.type == "string_literal":
            kids = _named(n)
            if not kids or kids[0].type not in ("verbatim_string_characters", "expandable_string_literal",
                                                 "verbatim_here_string_characters"):
                raise self._unsupported(n, "string form")
        if n.type in _OP_NODES:
            for c in n.children:
                if not c.is_named and c.type not in _OP_NODES[n.type]:
                    raise self._unsupported(n, f"operator '{c.type}'")
        if n.type == "comparison_operator" and _t(n).lower() not in _CMP_OPS:
            raise self._unsupported(n, f"operator {_t(n)}")
        if n.type == "type_literal":
            name = _t(n)[1:-1].strip().lower()
            if name not in _CASTS and name not in _STATIC:
                raise self._unsupported(n, f"type {_t(n)}")
        if n.type == "catch_clause" and any(c.type == "catch_type_list" for c in n.children):
            raise self._unsupported(n, "typed catch")
        if n.type == "flow_control_statement":
            kw = _t(n.children[0]).lower()
            if kw not in ("throw", "exit", "break", "continue"):
                raise self._unsupported(n, f"'{kw}'")
        if n.type == "member_name" and any(c.type != "simple_name" for c in _named(n)):
            raise self._unsupported(n, "computed member name")
        if n.type == "invokation_expression":
            name = next(c for c in n.children if c.type == "member_name")
            if _t(name).lower() not in _METHODS:
                raise self._unsupported(n, f"method {_t(name)}()")
        if n.type == "variable":
            v = _t(n)
            if not re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*|\$_|\$\?", v):
                raise self._unsupported(n, f"variable form {v}")
        for c in n.children:
            if c.type in ("|", "&&", "||") or not c.is_named:
                if c.type in ("&&", "||", "&", ">", ">>", "2>&1", "redirection"):
                    raise self._unsupported(c, f"'{c.type}'")
                continue
            self._validate(c)

    def _unsupported(self, n: ts.Node, what: str) -> UnsupportedConstruct:
        r, c = n.start_point
        return UnsupportedConstruct(f"unsupported PowerShell {what} at line {r + 1} char {c + 1}: "
                                    f"{_t(n)[:60]!r}")

    # ------------------------------------------------------------------ errors
    def _where(self, n: ts.Node) -> dict[str, Any]:
        r, c = n.start_point
        line = self.src_lines[r] if r < len(self.src_lines) else ""
        width = (n.end_point[1] - c) if n.end_point[0] == r else len(line) - c
        return {"line": r + 1, "col": c + 1, "line_text": line, "extent": width}

    def _record(self, err: HyperVError, cmd: str, node: ts.Node) -> ErrorRecord:
        return ErrorRecord(err.message, err.fqid, err.category, err.exception, err.target, cmd, **self._where(node))

    def _eap(self, override: str | None = None) -> str:
        return (override or to_string(self.vars.get("erroractionpreference")) or "Continue").lower()

    def _write_error(self, rec: ErrorRecord, action: str) -> None:
        if action == "stop":
            raise _Terminating(rec)
        self.last_ok = False
        if action in ("silentlycontinue", "ignore"):
            return
        self.errors.append(rec)

    # ------------------------------------------------------------------ statements
    def _exec_list(self, n: ts.Node, out: list[Any]) -> None:
        for c in _named(n):
            if c.type in ("statement_list", "statement_block"):
                self._exec_list(c, out)
            elif c.type in _STATEMENTS:
                self._exec_stmt(c, out)
            elif c.type in ("{", "}"):
                continue
            else:
                raise self._unsupported(c, f"statement '{c.type}'")

    def _exec_stmt(self, n: ts.Node, out: list[Any]) -> None:
        if self.stop_after is not None and self.statements >= self.stop_after:
            self.killed = True
            raise _Killed()
        try:
            self._exec_stmt_inner(n, out)
        except _PY_ERRORS as e:
            # a .NET exception in PowerShell terms (conversion, index, ...): a terminating RuntimeException
            raise _Terminating(_runtime_error(e, self._where(n))) from e
        if n.type == "pipeline":
            self.statements += 1

    def _exec_stmt_inner(self, n: ts.Node, out: list[Any]) -> None:
        t = n.type
        if t == "empty_statement":
            return
        if t == "pipeline":
            try:
                self.last_ok = True
                try:
                    res = self._pipeline(n)
                except _PY_ERRORS as pe:
                    raise _Terminating(_runtime_error(pe, self._where(n))) from pe
                out.extend(res)
            except _Terminating as e:
                if self._eap() == "stop" or getattr(e, "script", False) or self._in_try:
                    raise
                # statement-terminating error outside try with EAP != Stop: report, go on
                self.errors.append(e.record)
                self.last_ok = False
            return
        if t == "try_statement":
            return self._try(n, out)
        if t == "if_statement":
            return self._if(n, out)
        if t == "foreach_statement":
            return self._foreach(n, out)
        if t == "flow_control_statement":
            kw = _t(n.children[0]).lower()
            arg = next((c for c in _named(n) if c.type == "pipeline"), None)
            if kw == "exit":
                val = _collect(self._pipeline(arg)) if arg is not None else 0
                raise _Exit(int(_num(val)) if val is not None else 0)
            if kw == "break":
                raise _Break()
            if kw == "continue":
                raise _Continue()
            # throw
            if arg is None:
                cur = self.vars.get("_")
                if isinstance(cur, ErrorRecord):
                    e = _Terminating(cur)
                else:
                    e = _Terminating(ErrorRecord("ScriptHalted", "ScriptHalted", "OperationStopped",
                                                 **self._where(n)))
            else:
                val = _collect(self._pipeline(arg))
                if isinstance(val, ErrorRecord):
                    e = _Terminating(val)
                else:
                    msg = to_string(val) if val is not None else "ScriptHalted"
                    e = _Terminating(ErrorRecord(msg, msg, "OperationStopped", target=msg, **self._where(n)))
            e.script = True  # type: ignore[attr-defined]
            raise e
        raise self._unsupported(n, f"statement '{t}'")

    _in_try = 0

    def _try(self, n: ts.Node, out: list[Any]) -> None:
        body = next(c for c in n.children if c.type == "statement_block")
        catches = next((c for c in n.children if c.type == "catch_clauses"), None)
        fin = next((c for c in n.children if c.type == "finally_clause"), None)
        try:
            self._in_try += 1
            try:
                self._exec_list(body, out)
            finally:
                self._in_try -= 1
        except _Terminating as e:
            if catches is None:
                raise
            clause = _named(catches)[0]
            saved = self.vars.get("_")
            self.vars["_"] = e.record
            try:
                self._exec_list(next(c for c in clause.children if c.type == "statement_block"), out)
            finally:
                self.vars["_"] = saved
        finally:
            if fin is not None and not self.killed:     # a killed process runs no finally block
                self._exec_list(next(c for c in fin.children if c.type == "statement_block"), out)

    def _if(self, n: ts.Node, out: list[Any]) -> None:
        kids = n.children
        cond = next(c for c in kids if c.type == "pipeline")
        block = next(c for c in kids if c.type == "statement_block")
        if truthy(_collect(self._pipeline(cond))):
            return self._exec_list(block, out)
        for c in kids:
            if c.type == "elseif_clauses":
                for ei in _named(c):
                    econd = next(x for x in ei.children if x.type == "pipeline")
                    if truthy(_collect(self._pipeline(econd))):
                        return self._exec_list(next(x for x in ei.children if x.type == "statement_block"), out)
            if c.type == "else_clause":
                return self._exec_list(next(x for x in c.children if x.type == "statement_block"), out)

    def _foreach(self, n: ts.Node, out: list[Any]) -> None:
        var = next(c for c in n.children if c.type == "variable")
        src = next(c for c in n.children if c.type == "pipeline")
        block = next(c for c in n.children if c.type == "statement_block")
        items = self._pipeline(src)
        name = _t(var)[1:].lower()
        for it in items:
            self.vars[name] = it
            try:
                self._exec_list(block, out)
            except _Continue:
                continue
            except _Break:
                break

    # ------------------------------------------------------------------ pipelines
    def _pipeline(self, n: ts.Node) -> list[Any]:
        """Evaluate a pipeline node; returns the list of output objects."""
        kids = _named(n)
        if len(kids) != 1:
            raise self._unsupported(n, "pipeline form")
        k = kids[0]
        if k.type == "assignment_expression":
            self._assign(k)
            return []
        if k.type == "pipeline_chain":
            return self._chain(k)
        return _enumerate(self._eval(k))

    def _value(self, n: ts.Node) -> Any:
        """Value of a pipeline used as a value: a lone expression keeps its value (arrays stay arrays),
        command output is collected (none -> $null, one -> the object, several -> array)."""
        kids = _named(n)
        if len(kids) == 1 and kids[0].type == "pipeline_chain":
            stages = _named(kids[0])
            if len(stages) == 1 and stages[0].type != "command":
                return self._eval(stages[0])
        return _collect(self._pipeline(n))

    def _chain(self, n: ts.Node) -> list[Any]:
        stages = _named(n)
        data: list[Any] | None = None
        for i, st in enumerate(stages):
            if st.type == "command":
                data = self._command(st, data)
            else:
                if i != 0:
                    raise self._unsupported(st, "expression after '|'")
                data = _enumerate(self._eval(st))
        return data or []

    def _assign(self, n: ts.Node) -> None:
        lhs = next(c for c in n.children if c.type == "left_assignment_expression")
        op = _t(next(c for c in n.children if c.type == "assignement_operator"))
        rhs = next(c for c in n.children if c.type in ("pipeline", "statement_list") or c.type in _STATEMENTS)
        if rhs.type != "pipeline":
            raise self._unsupported(rhs, "assignment of a statement")
        val = self._value(rhs)
        target = _unwrap(lhs)
        if op == "+=":
            val = _add(self._eval(target), val)
        elif op == "-=":
            val = _num(self._eval(target)) - _num(val)
        elif op != "=":
            raise self._unsupported(n, f"operator {op}")
        if target.type == "variable":
            name = _t(target)[1:].lower()
            if name in ("true", "false", "null"):
                if name == "null":
                    return
                raise _Terminating(ErrorRecord(f"Cannot overwrite variable {name} because it is read-only or constant.",
                                               "VariableNotWritable", "WriteError", **self._where(target)))
            self.vars[name] = val
        elif target.type == "member_access":
            obj = self._eval(_named(target)[0])
            member = _t(next(c for c in target.children if c.type == "member_name"))
            if isinstance(obj, Hashtable):
                obj.set(member, val)
            elif isinstance(obj, PSObject):
                if not obj.has(member):
                    raise _Terminating(ErrorRecord(
                        f"The property '{member}' cannot be found on this object. Verify that the property exists and can be set.",
                        "PropertyAssignmentException", "InvalidOperation", **self._where(target)))
                obj.set(member, val)
            else:
                raise _Terminating(ErrorRecord(
                    f"The property '{member}' cannot be found on this object. Verify that the property exists and can be set.",
                    "PropertyNotFound", "InvalidOperation", **self._where(target)))
        elif target.type == "element_access":
            obj = self._eval(_named(target)[0])
            idx = self._eval(_named(target)[1])
            if isinstance(obj, Hashtable):
                obj.set(idx, val)
            elif isinstance(obj, list):
                obj[int(_num(idx))] = val
            else:
                raise _Terminating(ErrorRecord("Unable to index into an object of this type.",
                                               "CannotIndex", "InvalidOperation", **self._where(target)))
        else:
            raise self._unsupported(target, "assignment target")

    # ------------------------------------------------------------------ commands
    def _command(self, n: ts.Node, input_items: list[Any] | None) -> list[Any]:
        name_node = next(c for c in n.children if c.type == "command_name")
        name = _t(name_node)
        num = parse_number(name)
        elems_node = next((c for c in n.children if c.type == "command_elements"), None)
        elems = [c for c in _named(elems_node)] if elems_node is not None else []
        if num is not None and not any(c.type != "command_argument_sep" for c in elems):
            # the grammar reads `33280Mb` at statement start as a command; PowerShell reads a number
            return [num]
        spec = self.cmdlets.get(name.lower())
        if spec is None:
            rec = ErrorRecord(
                f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
                "program. Check the spelling of the name, or if a path was included, verify that the path is "
                "correct and try again.", "CommandNotFoundException", "ObjectNotFound",
                "System.Management.Automation.CommandNotFoundException", target=name, **self._where(name_node))
            raise _Terminating(rec)
        # gather tokens in order: ("param", name, node, value, has_value) / ("arg", None, node, value, True)
        tokens: list[tuple[str, str | None, ts.Node, Any, bool]] = []
        i = 0
        while i < len(elems):
            e = elems[i]
            if e.type == "command_argument_sep":
                i += 1
                continue
            if e.type == "command_parameter":
                pname = _t(e)[1:]
                colon = i + 1 < len(elems) and elems[i + 1].type == "command_argument_sep" and _t(elems[i + 1]).strip() == ":"
                if pname.endswith(":") or colon:
                    pname = pname.removesuffix(":")
                    j = i + 1
                    while j < len(elems) and elems[j].type == "command_argument_sep":
                        j += 1
                    if j >= len(elems):
                        raise self._unsupported(e, "parameter with ':' but no value")
                    tokens.append(("param", pname, e, self._arg(elems[j]), True))
                    i = j + 1
                    continue
                tokens.append(("param", pname, e, None, False))
                i += 1
                continue
            if e.type == "generic_token" and _t(e).startswith(",") and tokens and tokens[-1][0] in ("arg", "param") \
                    and tokens[-1][4] and len(_t(e)) > 1:
                # `-Class Display,Media`: the grammar splits a bare-word list into tokens ',Media'
                kind, pn, pnode, prev, hv = tokens[-1]
                more = self._arg_text(_t(e)[1:])
                tokens[-1] = (kind, pn, pnode, (prev if isinstance(prev, list) else [prev]) + [more], hv)
                i += 1
                continue
            tokens.append(("arg", None, e, self._arg(e), True))
            i += 1
        return spec.invoke(self, name_node, tokens, input_items)

    @staticmethod
    def _arg_text(txt: str) -> Any:
        num = parse_number(txt)
        return num if num is not None else txt

    def _arg(self, e: ts.Node) -> Any:
        if e.type == "generic_token":
            txt = _t(e)
            num = parse_number(txt)
            return num if num is not None else txt
        return self._eval(e)

    # ------------------------------------------------------------------ expressions
    def _eval(self, n: ts.Node) -> Any:
        t = n.type
        if t in _PASS:
            kids = [k for k in _named(n) if k.type != "comparison_operator"]
            if len(kids) == 1 and len(_named(n)) == 1:
                return self._eval(kids[0])
            return self._binary(n, kids)
        if t == "variable":
            name = _t(n)[1:].lower()
            if name == "true":
                return True
            if name == "false":
                return False
            if name == "null":
                return None
            if name == "?":
                return self.last_ok
            return self.vars.get(name)
        if t == "string_literal":
            k = _named(n)[0]
            raw = _t(k)
            if k.type == "verbatim_here_string_characters" or raw.startswith("@"):
                body = raw[2:-2]
                return body[1:-1] if body.startswith("\n") else body.strip("\r\n")
            if k.type == "expandable_string_literal":
                return raw[1:-1]
            return _verbatim(raw)
        if t == "integer_literal" or t == "real_literal":
            v = parse_number(_t(n).rstrip("lL"))
            if v is None:
                raise self._unsupported(n, "number literal")
            return v
        if t == "array_expression":
            out: list[Any] = []
            body = next((c for c in n.children if c.type == "statement_list"), None)
            if body is not None:
                self._exec_list(body, out)
            return list(out)
        if t == "sub_expression":
            out = []
            body = next((c for c in n.children if c.type == "statement_list"), None)
            if body is not None:
                self._exec_list(body, out)
            return _collect(out)
        if t == "parenthesized_expression":
            return self._value(next(c for c in n.children if c.type == "pipeline"))
        if t == "hash_literal_expression":
            h = Hashtable()
            body = next((c for c in n.children if c.type == "hash_literal_body"), None)
            for entry in (_named(body) if body is not None else []):
                key_node = next(c for c in entry.children if c.type == "key_expression")
                kk = _named(key_node)[0]
                key = _t(kk) if kk.type == "simple_name" else self._eval(kk)
                vnode = next(c for c in entry.children if c.type in ("pipeline",) or c.type in _STATEMENTS and c.type != "empty_statement")
                h.set(key, self._value(vnode) if vnode.type == "pipeline" else _collect(self._pipeline(vnode)))
            return h
        if t == "member_access":
            obj = self._eval(_named(n)[0])
            static = any(c.type == "::" for c in n.children)
            member = _t(next(c for c in n.children if c.type == "member_name"))
            if static:
                tname = _t(_named(n)[0])[1:-1].strip().lower()
                if tname in ("text.encoding", "system.text.encoding") and member.lower() == "utf8":
                    return _UTF8
                raise self._unsupported(n, f"static member {member}")
            return _member(obj, member)
        if t == "element_access":
            kids = _named(n)
            obj = self._eval(kids[0])
            idx = self._eval(kids[1])
            return _index(obj, idx)
        if t == "invokation_expression":
            return self._invoke(n)
        if t == "expression_with_unary_operator":
            op = _t(n.children[0]).lower()
            if n.children[0].type == "cast_expression":
                return self._eval(n.children[0])
            val = self._eval(_named(n)[-1])
            if op in ("-not", "!"):
                return not truthy(val)
            if op == "-":
                return -_num(val)
            if op == "+":
                return _num(val)
            if op == ",":
                return [val]
            raise self._unsupported(n, f"unary operator {op}")
        if t == "cast_expression":
            tl = next(c for c in n.children if c.type == "type_literal")
            val = self._eval(_named(n)[-1])
            return self._cast(tl, val)
        if t == "type_literal":
            return _TypeRef(_t(n)[1:-1].strip().lower())
        raise self._unsupported(n, f"expression '{t}'")

    def _binary(self, n: ts.Node, kids: list[ts.Node]) -> Any:
        t = n.type
        if t in ("array_literal_expression",):
            return [self._eval(k) for k in kids]
        ops = [c for c in n.children if not c.is_named or c.type == "comparison_operator"]
        if len(kids) != 2 or len(ops) != 1:
            raise self._unsupported(n, "expression form")
        op = _t(ops[0]).lower()
        if t.startswith("logical"):
            left = truthy(self._eval(kids[0]))
            if op == "-and":
                return left and truthy(self._eval(kids[1]))
            if op == "-or":
                return left or truthy(self._eval(kids[1]))
            raise self._unsupported(n, f"operator {op}")
        a, b = self._eval(kids[0]), self._eval(kids[1])
        if t.startswith("comparison"):
            return _compare(op, a, b)
        if t.startswith("additive"):
            if op == "+":
                return _add(a, b)
            if op == "-":
                return _arith(a, b, lambda x, y: x - y)
        if t.startswith("multiplicative"):
            if op == "*":
                return _arith(a, b, lambda x, y: x * y)
            if op == "/":
                if _num(b) == 0:
                    raise _Terminating(ErrorRecord("Attempted to divide by zero.", "RuntimeException",
                                                   "NotSpecified", **self._where(n)))
                q = _num(a) / _num(b)
                return int(q) if q == int(q) else q
            if op == "%":
                return _arith(a, b, lambda x, y: x % y)
        raise self._unsupported(n, f"operator {op}")

    def _cast(self, tl: ts.Node, val: Any) -> Any:
        name = _t(tl)[1:-1].strip().lower()
        try:
            if name in ("int", "int32", "long", "int64", "uint32", "uint64"):
                v = _num(val)
                r = int(round(v)) if isinstance(v, float) else int(v)
                if name.startswith("u") and r < 0:
                    raise ValueError
                low, high = _CAST_RANGES[name]
                if not low <= r <= high:
                    # .NET's Overflow_Int32 / Overflow_UInt32 ... resource texts, as PowerShell wraps them for a cast
                    net = {"int": "Int32", "long": "Int64"}.get(name, name.capitalize().replace("Ui", "UI"))
                    raise _Terminating(ErrorRecord(
                        f'Cannot convert value "{to_string(val)}" to type "System.{net}". Error: "Value was either '
                        f'too large or too small for a{"n" if net[0] == "I" else ""} {net}."',
                        "InvalidCastIConvertible", "InvalidArgument", **self._where(tl)))
                return r
            if name == "double":
                return float(_num(val))
        except (ValueError, TypeError):
            raise _Terminating(ErrorRecord(
                f'Cannot convert value "{to_string(val)}" to type "System.{name.capitalize()}". '
                'Error: "Input string was not in a correct format."',
                "InvalidCastFromStringToInteger", "InvalidArgument", **self._where(tl))) from None
        if name == "string":
            return to_string(val)
        if name == "bool":
            return truthy(val)
        if name in ("array", "object[]"):
            return val if isinstance(val, list) else ([] if val is None else [val])
        if name in ("pscustomobject", "ordered"):
            if not isinstance(val, Hashtable):
                raise self._unsupported(tl, f"[{name}] on a non-hashtable")
            if name == "ordered":
                return Hashtable(val.items(), ordered=True)
            return PSObject((to_string(k), v) for k, v in val.items())
        raise self._unsupported(tl, f"cast {name}")

    def _invoke(self, n: ts.Node) -> Any:
        target_node = _named(n)[0]
        static = any(c.type == "::" for c in n.children)
        method = _t(next(c for c in n.children if c.type == "member_name")).lower()
        argl = next((c for c in n.children if c.type == "argument_list"), None)
        args: list[Any] = []
        if argl is not None:
            lst = next((c for c in argl.children if c.type == "argument_expression_list"), None)
            if lst is not None:
                args = [self._eval(a) for a in _named(lst)]
        if static:
            tname = _t(target_node)[1:-1].strip().lower()
            if tname in ("convert", "system.convert") and method == "frombase64string" and len(args) == 1:
                try:
                    return list(base64.b64decode(to_string(args[0]), validate=True))
                except (binascii.Error, ValueError):
                    raise _Terminating(ErrorRecord(
                        'Exception calling "FromBase64String" with "1" argument(s): "The input is not a valid '
                        'Base-64 string as it contains a non-base 64 character, more than two padding characters, '
                        'or an illegal character among the padding characters. "', "FormatException",
                        "NotSpecified", "System.Management.Automation.MethodInvocationException", **self._where(n))) from None
            raise self._unsupported(n, f"static method {method}")
        obj = self._eval(target_node)
        try:
            return _call_method(obj, method, args)
        except _MethodError as e:
            raise _Terminating(ErrorRecord(str(e), e.fqid, "InvalidOperation", **self._where(n))) from e


_PY_ERRORS = (ValueError, TypeError, IndexError, KeyError, RecursionError, OverflowError)


def _runtime_error(e: BaseException, where: dict[str, Any]) -> ErrorRecord:
    msg = str(e) if isinstance(e, ValueError) and str(e) else {
        RecursionError: "The script failed due to call depth overflow.",
        IndexError: "Index was outside the bounds of the array.",
        OverflowError: "Arithmetic operation resulted in an overflow.",
    }.get(type(e), f"Operation failed: {e}")
    fq = "CallDepthOverflow" if isinstance(e, RecursionError) else "RuntimeException"
    return ErrorRecord(msg, fq, "InvalidOperation", **where)


class _TypeRef:
    def __init__(self, name: str):
        self.name = name


class _Utf8:
    pass


_UTF8 = _Utf8()


class _MethodError(Exception):
    def __init__(self, msg: str, fqid: str = "MethodNotFound"):
        super().__init__(msg)
        self.fqid = fqid


def _call_method(obj: Any, method: str, args: list[Any]) -> Any:
    if isinstance(obj, _Utf8) and method == "getstring" and len(args) == 1:
        data = args[0]
        if isinstance(data, list):
            return bytes(int(b) & 0xFF for b in data).decode("utf-8", errors="replace")
        raise _MethodError("Cannot convert argument \"bytes\" to type \"System.Byte[]\".", "MethodArgumentConversionInvalidCastArgument")
    if obj is None:
        raise _MethodError("You cannot call a method on a null-valued expression.", "InvokeMethodOnNull")
    if method == "tostring" and not args:
        return to_string(obj)
    if isinstance(obj, Hashtable) and method == "containskey" and len(args) == 1:
        return obj.has(args[0])
    if isinstance(obj, list) and method == "contains" and len(args) == 1:
        return any(_eq(x, args[0], ci=False) for x in obj)
    if isinstance(obj, str):
        s = obj
        try:
            if method == "substring":
                start = int(_num(args[0]))
                if len(args) == 1:
                    if start > len(s) or start < 0:
                        raise IndexError
                    return s[start:]
                ln = int(_num(args[1]))
                if start < 0 or ln < 0 or start + ln > len(s):
                    raise IndexError
                return s[start:start + ln]
            if method == "lastindexof" and len(args) == 1:
                return s.rfind(to_string(args[0]))
            if method == "indexof" and len(args) == 1:
                return s.find(to_string(args[0]))
            if method == "startswith" and len(args) == 1:
                return s.startswith(to_string(args[0]))
            if method == "endswith" and len(args) == 1:
                return s.endswith(to_string(args[0]))
            if method == "contains" and len(args) == 1:
                return to_string(args[0]) in s
            if method == "toupper" and not args:
                return s.upper()
            if method == "tolower" and not args:
                return s.lower()
            if method == "trim" and not args:
                return s.strip()
            if method == "replace" and len(args) == 2:
                return s.replace(to_string(args[0]), to_string(args[1]))
            if method == "split" and len(args) == 1:
                seps = to_string(args[0])
                return re.split("[" + re.escape(seps) + "]", s) if seps else [s]
        except IndexError:
            raise _MethodError('Exception calling "Substring": "Index and length must refer to a location within the string."',
                               "ArgumentOutOfRangeException") from None
    raise _MethodError(f"Method invocation failed because [{_typename(obj)}] does not contain a method named '{method}'.")


def _typename(v: Any) -> str:
    if isinstance(v, str):
        return "System.String"
    if isinstance(v, bool):
        return "System.Boolean"
    if isinstance(v, int):
        return "System.Int32" if -2**31 <= v < 2**31 else "System.Int64"
    if isinstance(v, list):
        return "System.Object[]"
    if isinstance(v, Hashtable):
        return "System.Collections.Hashtable"
    if isinstance(v, PSObject):
        return v.typename
    return type(v).__name__


def _unwrap(n: ts.Node) -> ts.Node:
    while n.type in _PASS and len(_named(n)) == 1:
        n = _named(n)[0]
    return n


def _enumerate(v: Any) -> list[Any]:
    if isinstance(v, list):
        return list(v)
    if v is None:
        return [None]
    return [v]


def _collect(items: list[Any]) -> Any:
    items = [x for x in items]
    if not items:
        return None
    if len(items) == 1:
        return items[0]
    return items


def _member(obj: Any, name: str) -> Any:
    low = name.lower()
    if isinstance(obj, list):
        if low in ("count", "length"):
            return len(obj)
        vals = []
        for x in obj:
            v = _member(x, name)
            if isinstance(v, list):
                vals.extend(v)
            elif v is not None:
                vals.append(v)
        return _collect(vals)
    if isinstance(obj, Hashtable):
        if obj.has(name):
            return obj.get(name)
        if low in ("count",):
            return len(obj)
        if low == "keys":
            return [k for k, _ in obj.items()]
        if low == "values":
            return [v for _, v in obj.items()]
        return None
    if isinstance(obj, PSObject):
        if obj.has(name):
            return obj.get(name)
        if low == "count":
            return 1
        return None
    if isinstance(obj, ErrorRecord):
        return obj.prop(name)
    if isinstance(obj, str):
        if low == "length":
            return len(obj)
        if low == "count":
            return 1
        return None
    if isinstance(obj, PSEnum):
        if low == "value__":
            return obj.value
        return None
    if obj is None:
        return 0 if low == "count" else None
    if low == "count":
        return 1
    return None


def _index(obj: Any, idx: Any) -> Any:
    if isinstance(obj, Hashtable):
        return obj.get(idx)
    if isinstance(obj, PSObject):
        return obj.get(to_string(idx))
    if isinstance(obj, (list, str)):
        i = int(_num(idx))
        try:
            return obj[i]
        except IndexError:
            return None
    if obj is None:
        raise _Terminating(ErrorRecord("Cannot index into a null array.", "NullArray", "InvalidOperation"))
    i = int(_num(idx))
    return obj if i in (0, -1) else None


def _num(v: Any) -> int | float:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, PSEnum):
        return v.value
    if v is None:
        return 0
    if isinstance(v, str):
        s = v.strip()
        if s == "":
            return 0
        p = parse_number(s)
        if p is None:
            raise ValueError(f"Cannot convert value \"{v}\" to type \"System.Int32\".")
        return p
    if isinstance(v, list) and len(v) == 1:
        return _num(v[0])
    raise ValueError(f"Cannot convert the \"{to_string(v)}\" value of type \"{_typename(v)}\" to type \"System.Int32\".")


def _arith(a: Any, b: Any, f: Callable[[Any, Any], Any]) -> Any:
    try:
        return f(_num(a), _num(b))
    except ValueError as e:
        raise _Terminating(ErrorRecord(str(e), "InvalidArgument", "InvalidArgument")) from e


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return a + (b if isinstance(b, list) else [b])
    if isinstance(a, str):
        return a + to_string(b)
    if isinstance(a, Hashtable) and isinstance(b, Hashtable):
        h = Hashtable(a.items())
        for k, v in b.items():
            if h.has(k):
                raise _Terminating(ErrorRecord(f"Item has already been added. Key in dictionary: '{k}'",
                                               "System.ArgumentException", "OperationStopped"))
            h.set(k, v)
        return h
    if a is None:
        return b if not isinstance(b, list) else list(b)
    return _arith(a, b, lambda x, y: x + y)


def _eq(a: Any, b: Any, ci: bool = True) -> bool:
    if isinstance(a, PSEnum):
        return a == b if not isinstance(b, str) else a.name.lower() == b.lower()
    if isinstance(b, PSEnum) and isinstance(a, str):
        return b.name.lower() == a.lower()
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str):
        bs = to_string(b)
        return a.lower() == bs.lower() if ci else a == bs
    if isinstance(a, bool):
        return a == truthy(b)
    if isinstance(a, (int, float)):
        try:
            return a == _num(b)
        except ValueError:
            return False
    return a is b


def wildcard_regex(pat: str) -> str:
    """PowerShell wildcard (``*`` ``?`` ``[abc]`` ``[a-z]``, backtick escapes) as a regex."""
    rx, i = "", 0
    while i < len(pat):
        ch = pat[i]
        if ch == "`" and i + 1 < len(pat):
            rx += re.escape(pat[i + 1])
            i += 2
            continue
        if ch == "*":
            rx += ".*"
        elif ch == "?":
            rx += "."
        elif ch == "[":
            j = pat.find("]", i + 1)
            if j == -1:
                rx += re.escape(ch)
            else:
                body = pat[i + 1:j]
                rx += "[" + "".join(re.escape(c) if c != "-" else "-" for c in body) + "]"
                i = j
        else:
            rx += re.escape(ch)
        i += 1
    return rx


def _like(a: Any, pat: Any) -> bool:
    try:
        return re.fullmatch(wildcard_regex(to_string(pat)), to_string(a), re.I | re.S) is not None
    except re.error:
        return False


def _compare(op: str, a: Any, b: Any) -> Any:
    op = op.replace("-i", "-") if op in ("-ieq", "-ine") else op
    if op in ("-contains", "-notcontains"):
        items = a if isinstance(a, list) else [a]
        hit = any(_eq(x, b) for x in items)
        return hit if op == "-contains" else not hit
    if op in ("-in", "-notin"):
        items = b if isinstance(b, list) else [b]
        hit = any(_eq(x, a) for x in items)
        return hit if op == "-in" else not hit
    if isinstance(a, list):  # filter semantics
        return [x for x in a if _compare(op, x, b) is True]
    if op == "-eq":
        return _eq(a, b)
    if op == "-ne":
        return not _eq(a, b)
    if op == "-like":
        return _like(a, b)
    if op == "-notlike":
        return not _like(a, b)
    if isinstance(a, str):
        x, y = a.lower(), to_string(b).lower()
    else:
        x, y = _num(a), _num(b)
    return {"-gt": x > y, "-ge": x >= y, "-lt": x < y, "-le": x <= y}[op]


def _format_out(v: Any) -> str:
    if isinstance(v, ErrorRecord):
        return v.message
    return to_string(v)


def run_script(model: HostModel, script: str, stop_after: int | None = None) -> RunResult:
    """Parse, check and run ``script`` against ``model``; ``stop_after``: the process killed after that many statements
    (the lab's model of the failure, see KILLED_EXIT_CODE).

    Raises :class:`ScriptError` (before any side effect) for syntax errors or
    constructs outside the supported subset.
    """
    return Interpreter(model, stop_after=stop_after).run(script)


__all__ = ["Interpreter", "KILLED_EXIT_CODE", "RunResult", "ScriptError", "UnsupportedConstruct", "parse", "parse_number", "run_script",
           "syntax_errors", "wildcard_regex"]
