"""The tree view of a student's source, for similarity.py: the syntax tree in a normal form
(tree_rewrite.py) read as sequences of node labels, one per function or method, in which the file's
own names, strings, keyword names and annotations no longer count."""
import ast
import hashlib
import heapq

from tools.autograde.token_view import STRING, _defined_names, _import_bindings, _parse
from tools.autograde.tree_rewrite import (_CHAINS, _DEFS, _DROPPED_FIELDS, _MIRRORED, _OPERATORS, _SYMMETRIC,
                                          TREE_WORK, _desugar, _inlined, _postorder)

# ---------------------------------------------------------------- the tree view
# A copy rewritten without changing what it computes keeps few runs of the original's tokens, whatever
# the names: functions, methods and independent statements reordered, b + a for a + b, x += y for
# x = x + y, an expression split into temporaries, two lines made a loop, keyword arguments passed by
# position, torch.exp(x) written x.exp(), an if/return pair written as a conditional expression. (The
# red team's rewrite of a copy scored 0.146.) The tree view compares what such rewrites leave alone:
# the file's syntax tree, rewritten into one normal form (_desugar, _inlined) and read as a sequence of
# node labels (_emit) in which the file's own names, strings, keyword names and annotations no longer
# count; library names read as their full paths, as in the token view. Each function or method is a
# sequence of its own (and so is each class's header, and the module's other statements), so that
# their order does not count either. Nothing recurses: every pass walks an explicit stack or a list
# ast.walk made, and a file ast.parse gives up on has no tree view (its token view is still compared).
TREE = "tree"  # a tree fingerprint is (TREE, hash), apart from the token view's ints in one set
OWN, OWN_ATTRIBUTE = "<n>", "@"  # the labels of the file's own names, and of its own attributes after a dot
# Labels per k-gram and per winnowing window of the tree view (a line of code is about 10 to 30 labels).
# Measured for k in 10..20, w in 4..8 (numbers read by value), and in 6..20 with numbers abstracted (every
# number one label): every copy above reads 1.0 at every setting, so the honest files decide. Their highest
# pair is 0.50 at k = 14, w = 6 (0.50 to 0.57 at the settings around it: 14 files are few); with numbers
# abstracted it is 0.52 to 0.68 for k <= 14, hence numbers by value (a rewrite that keeps the program keeps
# its constants). Longer k-grams miss more of what the normal form does not undo: with .view -> .reshape,
# .size(0) -> .shape[0] and ** 2 -> .pow(2) in each honest file, the file against itself keeps a median 0.76
# (0.51 at least) at k = 14, 0.75 (0.42) at k = 20; all three on top of copied_rewrite, 0.67: under the flag.
TREE_KGRAM = 14
TREE_WINDOW = 6
class _Out:
    """A node's part of the sequence: labels (str) and its children's parts, flattened only at the end (a
    node's copy of its children's labels would cost the square of a deep expression's depth), and `key`,
    a hash of all of it, which puts operands and statements in one order whatever order they came in."""
    __slots__ = ("parts", "key")

    def __init__(self, parts: list):
        self.parts = parts
        digest = hashlib.blake2b(digest_size=8)
        for part in parts:
            digest.update(b"\x01" + part.key if isinstance(part, _Out) else b"\x02" + part.encode())
        self.key = digest.digest()


def _flatten(out: _Out) -> list:
    labels, stack = [], [out]
    while stack:
        part = stack.pop()
        if isinstance(part, str):
            labels.append(part)
        else:
            stack.extend(reversed(part.parts))
    return labels


def _number(value) -> str:
    """A number by its value: 0.5, .5 and 5e-1 are one label, and so are 784 and 784.0."""
    try:
        return repr(value) if isinstance(value, complex) else repr(float(value))
    except OverflowError:  # an int beyond any float (ast.parse takes up to 4,300 digits)
        return repr(value)


def _folded(terms: list, family: str):
    """The value of a chain whose operands (term, flipped) are all numbers, else None: 28 * 28 as 784."""
    if not all(isinstance(term, ast.Constant) and isinstance(term.value, (int, float))
               and not isinstance(term.value, bool) for term, _ in terms):
        return None
    value = 0.0 if family == "+" else 1.0
    try:
        for term, flipped in terms:
            if family == "+":
                value += -float(term.value) if flipped else float(term.value)
            elif family == "*":
                value *= 1.0 / float(term.value) if flipped else float(term.value)
            else:
                return None
    except (ZeroDivisionError, OverflowError):
        return None
    return value


def _effects(statement: ast.AST, substitutes: dict) -> tuple:
    """(names and .attributes it reads, those it writes), through the temporaries read inline."""
    def key(node):
        return node.id if isinstance(node, ast.Name) else "." + node.attr if isinstance(node, ast.Attribute) else None

    reads, writes, stack = set(), set(), [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and id(node) in substitutes:
            stack.append(substitutes[id(node)])
            continue
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            if not isinstance(node.ctx, ast.Load):
                base = node
                while isinstance(base, ast.Subscript):  # x[i] = ... writes x
                    base = base.value
                writes.add(key(base))
            elif key(node):
                reads.add(key(node))
        stack.extend(ast.iter_child_nodes(node))
    return reads, writes


def _canonical_order(run: list, done: dict, substitutes: dict) -> list:
    """Consecutive assignments in one order whatever order the file wrote them in: each after those it
    depends on (it reads what they write, or writes what they read or write), and otherwise the one of
    smallest key first."""
    effects = [_effects(statement, substitutes) for statement in run]
    after = [set() for _ in run]
    writer, readers = {}, {}
    for j, (reads, writes) in enumerate(effects):
        for name in reads | writes:
            if name in writer:
                after[j].add(writer[name])
        for name in writes:
            after[j].update(readers.get(name, ()))
        for name in reads:
            readers.setdefault(name, []).append(j)
        for name in writes:
            writer[name], readers[name] = j, []
        after[j].discard(j)
    waiting, followers = [len(before) for before in after], [[] for _ in run]
    for j, before in enumerate(after):
        for i in before:
            followers[i].append(j)
    ready = [(done[id(run[j])].key, j) for j in range(len(run)) if not waiting[j]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, j = heapq.heappop(ready)
        order.append(run[j])
        for follower in followers[j]:
            waiting[follower] -= 1
            if not waiting[follower]:
                heapq.heappush(ready, (done[id(run[follower])].key, follower))
    return order


def _emit(tree: ast.AST, names: tuple, bindings: dict, substitutes: dict, skipped: set) -> list:
    """The normal form as sequences of labels: one per function or method (its name not included),
    one per class for its header and other statements, and one for the rest of the module."""
    own, attributes = names
    done, paths = {}, {}  # {id(node): _Out}; {id(node): dotted library path} of a Name or Attribute
    separate = set()  # the functions and classes directly in the module or a class: sequences of their own
    stack = [tree]
    while stack:
        node = stack.pop()
        for statement in node.body:
            if isinstance(statement, _DEFS):
                separate.add(id(statement))
                if isinstance(statement, ast.ClassDef):
                    stack.append(statement)
    inner = set()  # the BinOps that are operands of a chain of their family: read with it
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _CHAINS:
            family = _CHAINS[type(node.op)][0]
            for child in (node.left, node.right):
                if isinstance(child, ast.BinOp) and _CHAINS.get(type(child.op), ("",))[0] == family:
                    inner.add(id(child))

    def of(node):
        if isinstance(node, _OPERATORS):  # a < b <= c: its operators' names
            return type(node).__name__
        return done[id(node)] if node is not None else "None"

    def block(statements):
        kept = [statement for statement in statements
                if id(statement) not in skipped and id(statement) not in separate]
        out, run = [], []
        for statement in kept + [None]:
            if isinstance(statement, ast.Assign):
                run.append(statement)
                continue
            out += _canonical_order(run, done, substitutes) if len(run) > 1 else run
            run = []
            if statement is not None:
                out.append(statement)
        return [done[id(statement)] for statement in out]

    def generic(node, label):
        parts = [label]
        for field, value in ast.iter_fields(node):
            if field in _DROPPED_FIELDS:
                continue
            if isinstance(value, list) and value and all(isinstance(item, ast.stmt) for item in value):
                parts += block(value) + ["/" + field]
            elif isinstance(value, list):  # of expressions (a default left out is None), or of names: dropped
                parts += [of(item) for item in value if item is None or isinstance(item, ast.AST)]
            elif isinstance(value, ast.AST):
                parts.append(of(value))
        return parts + [")"] if len(parts) > 1 else parts

    for node in _postorder(tree):
        if isinstance(node, (ast.expr_context, *_OPERATORS)) or id(node) in inner:
            continue
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load) and id(node) in substitutes and id(substitutes[id(node)]) in done:
                done[id(node)] = done[id(substitutes[id(node)])]
                continue
            if node.id not in own:
                paths[id(node)] = bindings.get(node.id, node.id)
            parts = [OWN if node.id in own else paths[id(node)]]
        elif isinstance(node, ast.Attribute):
            if id(node.value) in paths and len(paths[id(node.value)]) < 200:
                paths[id(node)] = paths[id(node.value)] + "." + node.attr
                parts = [paths[id(node)]]  # torch.nn.functional.relu, F.relu, relu: one label
            else:
                parts = ["." + (OWN_ATTRIBUTE if node.attr in attributes else node.attr), of(node.value)]
        elif isinstance(node, ast.Constant):
            value = node.value
            parts = [STRING if isinstance(value, (str, bytes)) else repr(value) if value is None or
                     isinstance(value, bool) or value is Ellipsis else _number(value)]
        elif isinstance(node, ast.Call):
            path, args = paths.get(id(node.func)), list(node.args)
            rest = [of(arg) for arg in args] + [of(keyword) for keyword in node.keywords]
            if path == "super":  # super(VAE, self) as super()
                parts = ["super()"]
            elif path and path.startswith("torch.") and path.count(".") == 1 and args \
                    and not isinstance(args[0], ast.Starred):  # torch.exp(x) as x.exp()
                parts = ["call", _Out(["." + path[len("torch."):], rest[0]]), *rest[1:], ")"]
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
                    and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str):
                parts = ["format", *rest, ")"]  # "{}".format(x) as f"{x}"
            else:
                parts = ["call", of(node.func), *rest, ")"]
        elif isinstance(node, ast.keyword):  # the value: f(x, dim=1) as f(x, 1)
            if node.arg is not None:
                done[id(node)] = of(node.value)
                continue
            parts = ["**", of(node.value)]
        elif isinstance(node, ast.JoinedStr):
            values = [value.value for value in node.values if isinstance(value, ast.FormattedValue)]
            parts = ["format", *[of(value) for value in values], ")"]
        elif isinstance(node, ast.FormattedValue):
            parts = [of(node.value)]
        elif isinstance(node, ast.BinOp) and type(node.op) in _CHAINS:
            family, terms, pending = _CHAINS[type(node.op)][0], [], [(node, False)]
            while pending:  # the chain's operands, each with its sign: a - (b + c) is a, -b, -c
                part, flipped = pending.pop()
                if isinstance(part, ast.BinOp) and _CHAINS.get(type(part.op), ("",))[0] == family:
                    pending += [(part.left, flipped), (part.right, flipped != bool(_CHAINS[type(part.op)][1]))]
                elif family == "+" and isinstance(part, ast.UnaryOp) and isinstance(part.op, (ast.USub, ast.UAdd)):
                    pending.append((part.operand, flipped != isinstance(part.op, ast.USub)))
                else:
                    terms.append((part, flipped))
            value = _folded(terms, family)
            if value is not None:
                parts = [_number(value)]
            else:
                terms = [_Out(["neg" if family == "+" else "inv", of(part)]) if flipped else of(part)
                         for part, flipped in terms]
                parts = [family, *sorted(terms, key=lambda term: term.key), ")"]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) \
                and isinstance(node.left.value, str):  # "%d" % x as f"{x}"
            values = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            parts = ["format", *[of(value) for value in values], ")"]
        elif isinstance(node, ast.BinOp):
            parts = [type(node.op).__name__, of(node.left), of(node.right), ")"]
        elif isinstance(node, ast.BoolOp):
            values = sorted((of(value) for value in node.values), key=lambda out: out.key)  # a and b as b and a
            parts = [type(node.op).__name__, *values, ")"]
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                done[id(node)] = of(node.operand)
                continue
            parts = [{ast.USub: "neg", ast.Not: "not", ast.Invert: "~"}[type(node.op)], of(node.operand)]
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            op, left, right = type(node.ops[0]), of(node.left), of(node.comparators[0])
            if op in _MIRRORED:
                op, left, right = _MIRRORED[op], right, left
            elif issubclass(op, _SYMMETRIC):
                left, right = sorted((left, right), key=lambda out: out.key)
            parts = [op.__name__, left, right, ")"]
        elif isinstance(node, (ast.IfExp, ast.If)):
            test, body, orelse = node.test, node.body, node.orelse
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and orelse:  # if not c: a else b
                test, body, orelse = test.operand, orelse, body
            if isinstance(node, ast.IfExp):
                parts = ["ifexp", of(test), of(body), of(orelse), ")"]
            else:
                parts = ["if", of(test), *block(body), "else", *block(orelse), "end"]
        elif isinstance(node, (ast.Tuple, ast.List)):  # (a, b) and [a, b]
            parts = ["seq", *[of(item) for item in node.elts], ")"]
        elif isinstance(node, (ast.ListComp, ast.GeneratorExp)):  # [e for ...], (e for ...)
            parts = generic(node, "comp")
        elif isinstance(node, ast.Module):
            parts = block(node.body)
        else:
            parts = generic(node, type(node).__name__)
        done[id(node)] = _Out(parts)
    roots = [node for node in ast.walk(tree) if id(node) in separate]
    return [_flatten(done[id(node)]) for node in [tree] + roots]


def tree_sequences(text: str) -> list:
    """The file's normal form as sequences of labels (see _emit); [] when it does not parse."""
    tree = _parse(text)
    if tree is None:
        return []
    names, bindings, work = _defined_names(tree), _import_bindings(tree), [TREE_WORK]
    _desugar(tree, work)
    substitutes, skipped = _inlined(tree, work)
    return _emit(tree, names, bindings, substitutes, skipped)

