"""The token view of a student's source, for similarity.py: a stream of tokens in which layout, comments,
strings and the file's own names no longer count, and every imported name reads as its full path. Also
the parsing helpers the tree view shares (tree_view.py). Nothing here recurses over the code."""
import ast
import io
import keyword
import tokenize

STRING, NAME = "<str>", "<name>"  # the placeholders of every string literal and of the file's own names
_LAYOUT = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}  # read, never compared


def import_bindings(text: str) -> dict:
    """{name the file binds by an import: the dotted path it stands for}: `import torch as T` binds T to
    torch, `import torch.nn as nn` nn to torch.nn, `from torch.nn import Linear` Linear to
    torch.nn.Linear; so that every way of writing one library name reads the same. {} when the file
    does not parse."""
    tree = _parse(text)
    return {} if tree is None else _import_bindings(tree)


def _parse(text: str):
    """The file's syntax tree, or None when ast.parse gives up (a syntax error, or RecursionError or
    MemoryError on a deeply nested expression: the parser itself recurses)."""
    try:
        return ast.parse(text)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None


def _import_bindings(tree: ast.AST) -> dict:
    bindings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name != "*":
                    bindings[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bindings


def defined_names(text: str):
    """(names, attributes) the file itself defines, or None when it does not parse. names: functions,
    classes, arguments, assigned names, caught exceptions; attributes (read after a dot): assigned
    attributes, class attributes and functions (methods). Kept apart so that a local `mean` does not
    hide torch.mean. ast.walk is iterative, but ast.parse may give up on a deeply nested expression."""
    tree = _parse(text)
    return None if tree is None else _defined_names(tree)


def _defined_names(tree: ast.AST) -> tuple:
    names, attributes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            attributes.add(node.name)  # methods are read as self.name
            if isinstance(node, ast.ClassDef):  # and so are class attributes
                for statement in node.body:
                    targets = statement.targets if isinstance(statement, ast.Assign) else \
                        [statement.target] if isinstance(statement, ast.AnnAssign) else []
                    attributes.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            attributes.add(node.attr)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names, attributes


def _code_tokens(text: str) -> list:
    """(type, string, line) of the file's tokens but comments, blank lines and the encoding; a file that
    stops tokenizing (an unclosed bracket or string) keeps the tokens before the error."""
    tokens = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING) \
                    or token.type == tokenize.ERRORTOKEN and token.string.isspace():
                continue
            tokens.append((token.type, token.string, token.start[0]))
    except (tokenize.TokenError, SyntaxError):
        pass
    return tokens


def normalised_tokens(text: str) -> list:
    """The file as a list of token strings that does not depend on layout, comments, docstrings,
    string contents or the names the file defines: those names all become NAME (library names such
    as torch, nn.Linear, F.relu stay), every string literal STRING, and a statement that is only a
    string (a docstring) is dropped. In a file that does not parse every identifier becomes NAME."""
    return normalised_tokens_and_lines(text)[0]


def normalised_tokens_and_lines(text: str) -> tuple:
    """(normalised_tokens(text), the line of the file each of them comes from): to show a TA the lines
    that two files share (similarity.shared_passages)."""
    defined = defined_names(text)
    bindings = import_bindings(text)
    tokens = _code_tokens(text)
    out, lines, previous, i = [], [], (tokenize.NEWLINE, "", 0), 0

    def emit(*strings):
        out.extend(strings)
        lines.extend([tokens[i][2]] * len(strings))
    while i < len(tokens):
        kind, string, _ = tokens[i]
        if kind == tokenize.STRING:
            end = i + 1
            while end < len(tokens) and tokens[end][0] == tokenize.STRING:
                end += 1
            alone = previous[0] in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) \
                and (end == len(tokens) or tokens[end][0] in (tokenize.NEWLINE, tokenize.ENDMARKER))
            if not alone:
                emit(STRING)  # implicitly joined strings are one literal
            previous, i = tokens[end - 1], end
            continue
        if kind == tokenize.NAME and not keyword.iskeyword(string):
            if previous[1] != "." and string in bindings and (defined is None or string not in defined[0]):
                # an imported name as its full path: T.zeros, torch.zeros; Linear, nn.Linear, torch.nn.Linear
                path = bindings[string].split(".")
                emit(*[token for part in path for token in (part, ".")][:-1])
            elif defined is None:
                emit(NAME)
            elif previous[1] in ("(", ",") and i + 1 < len(tokens) and tokens[i + 1][1] == "=":
                # a keyword argument, the callee's parameter: `device=device` must read as `device=dev`
                # once a copy renames its own argument, and a copy renames its own functions' keywords
                emit(NAME)
            else:
                names, attributes = defined
                emit(NAME if string in (attributes if previous[1] == "." else names) else string)
        elif kind not in _LAYOUT:
            emit(string)
        previous, i = tokens[i], i + 1
    return out, lines

