"""The README and docs/: every relative link resolves, and no shell block calls a bare tool.

The Quick start never activates the venv, so a command written `flask ...` would run whatever
`flask` is on the reader's PATH (a system Flask prints a traceback and "No such command
'wallet'"). Every command is written `.venv/bin/...` instead; this test keeps it that way, and
keeps the links between the pages from rotting as files and headings move.
"""

import pathlib
import re
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Tools the venv provides and that a reader may also have system-wide, so that a bare call
# silently runs the wrong one. (`python3` is the Quick start's own, making the venv.)
VENV_TOOLS = ("flask", "gunicorn", "pytest", "python")
SHELL_LANGUAGES = {"sh", "shell", "bash", "console", "zsh"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# Where a new command starts inside a line of shell: after these, the next word is a command.
SEPARATORS = re.compile(r"&&|\|\||[|;&(]|\$\(|`")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PREFIXES = {"sudo", "env", "exec", "time", "nohup", "then", "do", "else", "!"}


def documents(root=ROOT):
    """The pages the checks cover: the README and every page in docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def split_blocks(text):
    """Split Markdown into prose lines and fenced blocks: (prose [(lineno, line)], blocks)."""
    prose, blocks = [], []
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.lstrip())
        if fence is None and match:
            fence = (match.group(1), match.group(2).lower(), number, [])
        elif fence is not None and line.strip().startswith(fence[0][0] * len(fence[0])) and (
            not line.strip().strip(fence[0][0])
        ):
            blocks.append({"language": fence[1], "line": fence[2], "lines": fence[3]})
            fence = None
        elif fence is not None:
            fence[3].append(line)
        else:
            prose.append((number, line))
    if fence is not None:
        blocks.append({"language": fence[1], "line": fence[2], "lines": fence[3]})
    return prose, blocks


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "").lower()
    kept = "".join(
        character
        for character in text
        if character in " -_" or unicodedata.category(character)[0] in "LNM"
    )
    return kept.replace(" ", "-")


def anchors(path):
    """Every anchor a page offers, numbered as GitHub numbers repeated headings."""
    prose, _ = split_blocks(path.read_text(encoding="utf-8"))
    seen, found = {}, set()
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path, root=ROOT):
    """Each relative link in a page that names a missing file or a missing heading."""
    prose, _ = split_blocks(path.read_text(encoding="utf-8"))
    problems = []
    for number, line in prose:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
                continue  # http:, https:, mailto: ...: not a file of this repository
            file_part, _, fragment = target.partition("#")
            destination = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not destination.exists():
                problems.append(f"{where}: no such file")
            elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
                problems.append(f"{where}: no heading with that anchor")
            elif root not in destination.parents and destination != root:
                problems.append(f"{where}: outside the repository")
    return problems


def commands(line):
    """The command words of one line of shell: the first word after each separator."""
    line = re.sub(r"(^|\s)#.*", "", line)  # a comment
    line = re.sub(r"^\s*\$\s+", "", line)  # a console prompt
    words = []
    for part in SEPARATORS.split(line):
        tokens = part.split()
        while tokens and (ASSIGNMENT.match(tokens[0]) or tokens[0] in PREFIXES):
            if tokens.pop(0) == "sudo":  # and its options: sudo -u postgres createdb ...
                while tokens and tokens[0].startswith("-"):
                    option = tokens.pop(0)
                    if option in ("-u", "-g") and tokens:
                        tokens.pop(0)
        if tokens:
            words.append(tokens[0])
    return words


def bare_calls(path, root=ROOT):
    """Each place a shell block in a page calls flask, gunicorn, pytest or python off the PATH."""
    _, blocks = split_blocks(path.read_text(encoding="utf-8"))
    problems = []
    for block in blocks:
        if block["language"] not in SHELL_LANGUAGES:
            continue
        joined = "\n".join(block["lines"]).replace("\\\n", " ")  # continuation lines
        for line in joined.splitlines():
            for word in commands(line):
                if word in VENV_TOOLS:
                    problems.append(
                        f"{path.relative_to(root)}:{block['line']}: `{word}` is called bare "
                        f"(write .venv/bin/{word}): {line.strip()}"
                    )
    return problems


@pytest.mark.parametrize("page", documents(), ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", documents(), ids=lambda page: page.name)
def test_no_shell_block_calls_a_tool_off_the_path(page):
    assert bare_calls(page) == []


@pytest.mark.parametrize("page", documents(), ids=lambda page: page.name)
def test_every_block_says_its_language(page):
    """An untagged block could hide a command from the check above: say `sh`, or `text`."""
    _, blocks = split_blocks(page.read_text(encoding="utf-8"))
    assert [block["line"] for block in blocks if not block["language"]] == []


def test_the_pages_are_found():
    names = {page.name for page in documents()}
    assert {"README.md", "architecture.md"} <= names


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = ".venv/bin/python -m pytest -n auto"
    assert command in ci and command in readme


# The checker checked: each kind of mistake it exists to catch is caught.


def write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_checker_finds_a_link_to_a_missing_file(tmp_path):
    write(tmp_path, "docs/a.md", "# A\n")
    readme = write(tmp_path, "README.md", "See [a](docs/a.md) and [b](docs/b.md).\n")
    assert broken_links(readme, tmp_path) == ["README.md:1: docs/b.md: no such file"]


def test_checker_finds_a_missing_anchor(tmp_path):
    write(tmp_path, "docs/a.md", "# A\n\n## The `wallet copy` command, step 2\n\n## Twice\n\n## Twice\n")
    page = write(
        tmp_path,
        "docs/b.md",
        "# B\n\n[ok](a.md#the-wallet-copy-command-step-2) [ok](a.md#twice-1) [ok](#b)\n"
        "[bad](a.md#the-wallet-copy-command) [bad](#nowhere)\n",
    )
    assert broken_links(page, tmp_path) == [
        "docs/b.md:4: a.md#the-wallet-copy-command: no heading with that anchor",
        "docs/b.md:4: #nowhere: no heading with that anchor",
    ]


def test_checker_ignores_what_is_not_a_relative_link(tmp_path):
    page = write(
        tmp_path,
        "README.md",
        "# R\n\n[web](https://example.com/x.md) `[code](missing.md)`\n\n"
        "```sh\n# [in a block](missing.md)\n```\n\n```text\n# Not a heading\n```\n",
    )
    assert broken_links(page, tmp_path) == []
    assert anchors(page) == {"r"}


@pytest.mark.parametrize(
    "line",
    [
        "flask --app app run",
        "CURRENCY_DECIMALS=USD=2 flask --app app wallet balance p",
        "cd somewhere && flask --app app init-db",
        "true; python -m pytest",
        "cat x | python -c 'print(1)'",
        "sudo gunicorn app:app",
        "ADMIN_TOKEN=x \\\n  gunicorn --workers 2 app:app",
        "sudo -u postgres python -c 'print(1)'",
        "echo $(pytest -q)",
        "$ python bench/callbacks.py",
    ],
)
def test_checker_finds_a_bare_call(tmp_path, line):
    page = write(tmp_path, "README.md", f"# R\n\n```sh\n{line}\n```\n")
    assert len(bare_calls(page, tmp_path)) == 1


@pytest.mark.parametrize(
    "line",
    [
        ".venv/bin/flask --app app run",
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
        "DATABASE_PATH=x.db .venv/bin/flask --app app wallet reconcile   # not flask itself",
        "curl -s http://127.0.0.1:5000/healthz  # then python would be wrong",
        "litestream restore -o /tmp/copy.db file:///tmp/replica",
    ],
)
def test_checker_accepts_the_venv_tools(tmp_path, line):
    page = write(tmp_path, "README.md", f"# R\n\n```sh\n{line}\n```\n\n```nginx\npython x;\n```\n")
    assert bare_calls(page, tmp_path) == []
