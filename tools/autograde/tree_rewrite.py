"""The tree view's rewriting, for tree_view.py: a student's syntax tree brought to one normal form
that rewrites which keep the program do not change (_desugar: augmented assignments, conditional
returns, loops over literals, append-loops; _inlined: temporaries used once, dead assignments).
Every pass walks an explicit stack or a list ast.walk made, within a work budget."""
import ast
import bisect
import collections
import copy

# A loop over a literal of at most UNROLL items is read as its body once per item, if that makes at most
# UNROLLED nodes: so that loops nested in loops cannot multiply a small file into millions of nodes.
UNROLL, UNROLLED = 8, 1000
# The normal form's own work on one file, in nodes visited (a copied one counts ten): far beyond any honest
# file (copied_a.py takes about 3,400, the reference submission.py 11,000), and what bounds the time of a
# megabyte of nested blocks. Past it the file is still read, with fewer temporaries inlined and loops
# unrolled. (A file of a megabyte, the most read_source takes, costs 15 to 30 s here, the token view 6 to 10.)
TREE_WORK = 2_000_000
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_JUMPS = (ast.Return, ast.Raise, ast.Continue, ast.Break)
_BLOCKS = ("body", "orelse", "finalbody")  # the fields that may hold a list of statements
_DROPPED_FIELDS = {"ctx", "annotation", "returns", "type_comment", "kind"}  # read by no one, or free to add
# BinOp families whose operands are read in any order: a - b as a + (-b), a / b as a * (1/b)
_CHAINS = {ast.Add: ("+", None), ast.Sub: ("+", "neg"), ast.Mult: ("*", None), ast.Div: ("*", "inv"),
           ast.BitOr: ("|", None), ast.BitAnd: ("&", None), ast.BitXor: ("^", None)}
_OPERATORS = (ast.operator, ast.boolop, ast.unaryop, ast.cmpop)  # read as their names where they are used
_SYMMETRIC = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)  # a == b as b == a
_MIRRORED = {ast.Gt: ast.Lt, ast.GtE: ast.LtE}  # a > b as b < a


def _postorder(root: ast.AST) -> list:
    """Every node under `root`, each after its children, in the order of the source (iteratively)."""
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(ast.iter_child_nodes(node))
    order.reverse()
    return order


def _statement_lists(node: ast.AST) -> list:
    """(field, list) of the statement lists directly under `node`: a body, an orelse, a finalbody."""
    return [(field, value) for field in _BLOCKS for value in [getattr(node, field, None)]
            if isinstance(value, list) and all(isinstance(item, ast.stmt) for item in value)]


def _copy(root: ast.AST) -> ast.AST:
    """A copy of the subtree (copy.deepcopy recurses)."""
    nodes = list(ast.walk(root))
    copies = {id(node): copy.copy(node) for node in nodes}
    for node in nodes:
        new = copies[id(node)]
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.AST):
                setattr(new, field, copies[id(value)])
            elif isinstance(value, list):
                setattr(new, field, [copies[id(item)] if isinstance(item, ast.AST) else item for item in value])
    return copies[id(root)]


def _replace_loads(root: ast.AST, name: str, value: ast.AST):
    """Every read of `name` under `root` (not root itself) becomes a copy of `value`."""
    for node in list(ast.walk(root)):
        for field, child in ast.iter_fields(node):
            if isinstance(child, list):
                setattr(node, field, [_copy(item) if _reads(item, name) else item for item in child])
            elif _reads(child, name):
                setattr(node, field, _copy(value))


def _reads(node, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)


def _as_load(target: ast.AST) -> ast.AST:
    """The expression that reads what `target` (x, a.b, a[i]) stores: for x += y read as x = x + y."""
    new = copy.copy(target)
    new.ctx = ast.Load()
    return new


def _single_name_assign(statement) -> bool:
    return isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
        and isinstance(statement.targets[0], ast.Name)


def _unrolled(statement, work: list):
    """The body once per item, the loop variable replaced by the item, of `for name in (a, b, ...)` over a
    literal of at most UNROLL items: how two lines written as a loop read as the two lines. None when
    the loop is not of that kind (or the file's work is spent)."""
    if not (isinstance(statement, ast.For) and isinstance(statement.target, ast.Name) and not statement.orelse
            and isinstance(statement.iter, (ast.Tuple, ast.List)) and 0 < len(statement.iter.elts) <= UNROLL
            and not any(isinstance(item, ast.Starred) for item in statement.iter.elts)):
        return None
    if work[0] <= 0:
        return None
    name, inside = statement.target.id, [node for part in statement.body for node in ast.walk(part)]
    work[0] -= len(inside)
    if any(isinstance(node, (ast.Break, ast.Continue)) or isinstance(node, ast.Name) and node.id == name
           and not isinstance(node.ctx, ast.Load) for node in inside):
        return None
    cost = len(inside) * len(statement.iter.elts)
    if cost > UNROLLED or 10 * cost > work[0]:  # a copied node costs about ten visited ones
        return None
    work[0] -= 10 * cost
    out = []
    for item in statement.iter.elts:
        for part in statement.body:
            part = _copy(part)
            _replace_loads(part, name, item)
            out.append(part)
    return out


def _comprehension(previous, statement):
    """`xs = []` then `for v in it: [if c:] xs.append(e)` as `xs = [e for v in it [if c]]`, and `t = 0`
    then `for v in it: t = t + e` as `t = sum(e for v in it)`; None when the pair is not one of those."""
    if not (_single_name_assign(previous) and isinstance(statement, ast.For) and not statement.orelse
            and len(statement.body) == 1):
        return None
    name, inner, ifs = previous.targets[0].id, statement.body[0], []
    if isinstance(inner, ast.If) and not inner.orelse and len(inner.body) == 1:
        inner, ifs = inner.body[0], [inner.test]
    loop = [ast.comprehension(target=statement.target, iter=statement.iter, ifs=ifs, is_async=0)]
    if isinstance(previous.value, ast.List) and not previous.value.elts and isinstance(inner, ast.Expr) \
            and isinstance(inner.value, ast.Call) and isinstance(inner.value.func, ast.Attribute) \
            and inner.value.func.attr == "append" and _reads(inner.value.func.value, name) \
            and len(inner.value.args) == 1 and not inner.value.keywords:
        return ast.Assign(targets=previous.targets, value=ast.ListComp(elt=inner.value.args[0], generators=loop))
    if isinstance(previous.value, ast.Constant) and previous.value.value == 0 and _single_name_assign(inner) \
            and inner.targets[0].id == name and isinstance(inner.value, ast.BinOp) \
            and isinstance(inner.value.op, ast.Add) and _reads(inner.value.left, name):
        total = ast.Call(func=ast.Name(id="sum", ctx=ast.Load()), keywords=[],
                         args=[ast.GeneratorExp(elt=inner.value.right, generators=loop)])
        return ast.Assign(targets=previous.targets, value=total)
    return None


def _conditional(statement):
    """`if c: return a` + `else: return b` as `return a if c else b`; `if c: x = a` + `else: x = b` as
    `x = a if c else b`, and without the else as `x = a if c else x`."""
    if not (isinstance(statement, ast.If) and len(statement.body) == 1 and len(statement.orelse) <= 1):
        return statement
    body, other = statement.body[0], (statement.orelse or [None])[0]
    if isinstance(body, ast.Return) and isinstance(other, ast.Return):
        none = ast.Constant(value=None)
        return ast.Return(value=ast.IfExp(test=statement.test, body=body.value or none, orelse=other.value or none))
    if _single_name_assign(body) and (other is None or _single_name_assign(other)
                                      and other.targets[0].id == body.targets[0].id):
        otherwise = other.value if other else ast.Name(id=body.targets[0].id, ctx=ast.Load())
        value = ast.IfExp(test=statement.test, body=body.value, orelse=otherwise)
        return ast.Assign(targets=body.targets, value=value)
    return statement


def _desugar_block(block: list, work: list) -> list:
    out = []
    for statement in block:
        if isinstance(statement, (ast.Import, ast.ImportFrom, ast.Pass)) or isinstance(statement, ast.Expr) \
                and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str):
            continue  # imports are read where the names are used; docstrings and pass are not code
        if isinstance(statement, ast.AnnAssign):  # the annotation is free to add: x: int = 3 as x = 3
            if statement.value is None:
                continue
            statement = ast.Assign(targets=[statement.target], value=statement.value)
        elif isinstance(statement, ast.AugAssign):  # x += y as x = x + y
            value = ast.BinOp(left=_as_load(statement.target), op=statement.op, right=statement.value)
            statement = ast.Assign(targets=[statement.target], value=value)
        unrolled = _unrolled(statement, work)
        if unrolled is not None:
            out.extend(unrolled)
            continue
        merged = _comprehension(out[-1], statement) if out else None
        if merged is not None:
            out[-1] = merged
            continue
        out.append(statement)
    # From the last statement up: an `if c:` whose body ends in return (raise, continue, break) and has no
    # else runs the statements after it only when not c, so they are its else; then if/else pairs of one
    # return, or of one assignment to one name, read as a conditional expression.
    reversed_tail = []
    for statement in reversed(out):
        if isinstance(statement, ast.If) and statement.body and not statement.orelse and reversed_tail \
                and isinstance(statement.body[-1], _JUMPS):
            statement.orelse, reversed_tail = reversed_tail[::-1], []
        reversed_tail.append(_conditional(statement))
    return reversed_tail[::-1]


def _desugar(tree: ast.AST, work: list):
    """The rewrites of the normal form that change statements, inner blocks first, in place: see
    _desugar_block."""
    for node in _postorder(tree):
        for field, block in _statement_lists(node):
            setattr(node, field, _desugar_block(block, work))


def _scope_blocks(scope: ast.AST) -> list:
    """The statement lists run in `scope` (a module or a function): not those of a nested def or class."""
    blocks, stack = [], [scope]
    while stack:
        node = stack.pop()
        for _, block in _statement_lists(node):
            if block:
                blocks.append(block)
                stack.extend(statement for statement in block if not isinstance(statement, _DEFS))
        stack.extend(getattr(node, "handlers", []))
        stack.extend(getattr(node, "cases", []))
    return blocks


def _inlined(tree: ast.AST, work: list) -> tuple:
    """({id of a read of a temporary: the expression it stands for}, {id of the assignments so read}).
    A name assigned in a block (x = e) and read once before it is assigned again is a temporary: the
    read stands for e, wherever the copy split an expression or the original wrote it whole; and in a
    function a value never read is not code. Only names whose every use is in that one block, with no
    other assignment to them inside a nested statement, so that the order of the block is the order
    they run in."""
    substitutes, skipped = {}, set()
    scopes = [tree] + [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        if work[0] < 0:
            break
        nodes = list(ast.walk(scope))
        work[0] -= len(nodes)
        counts = collections.Counter(node.id for node in nodes if isinstance(node, ast.Name))
        declared = {name for node in nodes if isinstance(node, (ast.Global, ast.Nonlocal)) for name in node.names}
        parameters = {node.arg for node in ast.walk(scope.args) if isinstance(node, ast.arg)} \
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else set()
        for block in _scope_blocks(scope):
            if work[0] < 0:
                break
            _inline_block(block, scope, counts, declared, parameters, substitutes, skipped, work)
    return substitutes, skipped


def _inline_block(block, scope, counts, declared, parameters, substitutes, skipped, work):
    reads_of, seen, stored = {}, collections.Counter(), []  # reads_of: {name: ([statement index], [node])}
    for j, statement in enumerate(block):
        stores = collections.Counter()
        for node in ast.walk(statement):
            work[0] -= 1
            if isinstance(node, ast.Name):
                seen[node.id] += 1
                if isinstance(node.ctx, ast.Load):
                    at, nodes = reads_of.setdefault(node.id, ([], []))
                    at.append(j)
                    nodes.append(node)
                else:
                    stores[node.id] += 1
        stored.append(stores)
    top = [statement.targets[0].id if _single_name_assign(statement) else None for statement in block]
    nested = {name for j, stores in enumerate(stored) for name, count in stores.items() if count > (top[j] == name)}
    assigned = {}  # {name: the indices of its statements `name = ...`}
    for j, name in enumerate(top):
        if name is not None:
            assigned.setdefault(name, []).append(j)
    for name, where in assigned.items():
        if name in nested or name in declared or seen[name] != counts[name] \
                or name in parameters and block is not scope.body:
            continue
        at, nodes = reads_of.get(name, ([], []))
        for number, j in enumerate(where):
            # the reads of this value: after it, until (and in the right-hand side of) the next name = ...
            end = where[number + 1] if number + 1 < len(where) else len(block) - 1
            first, last = bisect.bisect_right(at, j), bisect.bisect_right(at, end)
            if last - first == 1:
                substitutes[id(nodes[first])] = block[j].value
                skipped.add(id(block[j]))
            elif last == first and isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                skipped.add(id(block[j]))  # a value no one reads

