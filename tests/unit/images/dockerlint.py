"""A small structural linter for the Dockerfiles under images/.

No Docker engine runs where the tests run, so the images are checked as text: `parse` turns a
Dockerfile into stages of instructions the way BuildKit reads it (parser directives, comments,
line continuations, heredocs, `FROM ... AS name`, flags such as `--from=`), and each check returns
the problems it finds as `Problem(rule, line, message)`. `lint` runs every check for one image.

What a check proves is named by its rule; the rules are the house rules for kubemaas images:

| rule | what it wants |
| --- | --- |
| `pinned-base` | every `FROM` and `COPY --from` image has an exact version tag (or digest), or names an earlier stage |
| `multi-stage` | at least two stages: one that builds, one that ships |
| `non-root` | the final stage runs as a numeric, non-zero uid (and gid, when given) |
| `entrypoint` | `ENTRYPOINT ["kubemaas"]`, exec form |
| `cmd` | `CMD` in exec form, starting with the image's subcommand |
| `expose` | the image's ports are exposed |
| `remote-add` | no `ADD` of a URL or git repository |
| `pip-cache` | every `pip install`/`wheel`/`download` has `--no-cache-dir` |
| `pip-pins` | every package named to `pip install` is pinned with `==` |
| `cuda-base` | CUDA variants ship on an `nvidia/cuda` image, the others do not |
| `torch-index` | CPU variants take torch from the PyTorch CPU index, CUDA variants never do |
| `env` | `PYTHONDONTWRITEBYTECODE=1`, `PYTHONUNBUFFERED=1`, `HOME` and caches under /tmp |
| `workdir` | the final stage sets `WORKDIR` |
| `labels` | the OCI labels `source`, `title` and `version` are set |
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------------
# Parsing


class DockerfileSyntaxError(ValueError):
    """The text is not a Dockerfile this parser understands (the message names the line)."""


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # everything after the keyword and its --flags, continuations joined
    line: int  # 1-based line of the keyword
    flags: Mapping[str, str] = field(default_factory=dict)  # --from=builder -> {"from": "builder"}
    heredocs: tuple[str, ...] = ()  # bodies of `<<EOF` documents, in order

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None  # BuildKit runs an invalid JSON array as a shell command
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return [str(item) for item in value]
        return None


@dataclass(frozen=True)
class Stage:
    index: int
    base: str  # the image or earlier stage after FROM, variables resolved
    name: str | None  # the `AS name`, lower case
    line: int
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class Dockerfile:
    stages: tuple[Stage, ...]
    global_args: Mapping[str, str]  # ARGs before the first FROM, with their defaults

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_named(self, ref: str, before: int) -> Stage | None:
        """The stage `ref` (a name or an index) refers to from stage number `before`, if any."""
        for stage in self.stages[:before]:
            if ref.lower() == stage.name or (ref.isdigit() and int(ref) == stage.index):
                return stage
        return None

    def lineage(self, stage: Stage) -> list[Stage]:
        """`stage` and the earlier stages it is built FROM, nearest first."""
        chain = [stage]
        parent = self.stage_named(stage.base, stage.index)
        while parent is not None:
            chain.append(parent)
            parent = self.stage_named(parent.base, parent.index)
        return chain

    def root_image(self, stage: Stage) -> str:
        """The registry image at the bottom of `stage`'s lineage."""
        return self.lineage(stage)[-1].base


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(\S+)\s*$")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:=(\S*))?")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _logical_lines(text: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(first line number, instruction text, heredoc bodies) for each instruction."""
    lines = text.splitlines()
    escape = "\\"
    # Parser directives: `# name=value` comment lines at the very top, before anything else.
    for raw in lines:
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
            if escape not in ("\\", "`"):
                raise DockerfileSyntaxError(f"invalid escape directive {escape!r}")
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        current = lines[i].rstrip()
        while True:
            if current.endswith(escape):
                parts.append(current[: -len(escape)])
                i += 1
                # Comment and empty lines inside a continuation are dropped, as BuildKit does.
                while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                current = lines[i].rstrip()
            else:
                parts.append(current)
                i += 1
                break
        logical = " ".join(part.strip() for part in parts).strip()
        bodies: list[str] = []
        for match in _HEREDOC.finditer(logical):
            strip_tabs, terminator = match.group(1) == "-", match.group(3)
            body: list[str] = []
            while i < len(lines):
                line = lines[i].lstrip("\t") if strip_tabs else lines[i]
                i += 1
                if line == terminator:
                    break
                body.append(line)
            else:
                raise DockerfileSyntaxError(f"line {start + 1}: heredoc {terminator} is never closed")
            bodies.append("\n".join(body))
        yield start + 1, logical, tuple(bodies)


def _split_flags(args: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = args
    while True:
        match = _FLAG.match(rest)
        if not match:
            return flags, rest
        flags[match.group(1)] = match.group(2) if match.group(2) is not None else "true"
        rest = rest[match.end() :].lstrip()


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced from `variables`; unknown ones are left as written."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(value, text)


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    header: tuple[int, str, str | None] | None = None  # line, base, name of the open stage
    body: list[Instruction] = []

    def close() -> None:
        if header is not None:
            line, base, name = header
            stages.append(Stage(len(stages), base, name, line, tuple(body)))

    for line, logical, bodies in _logical_lines(text):
        keyword, _, rest = logical.partition(" ") if " " in logical else logical.partition("\t")
        keyword = keyword.strip().upper()
        flags, args = _split_flags(rest.strip())
        if keyword == "FROM":
            close()
            words = args.split()
            if len(words) == 3 and words[1].lower() == "as":
                base, name = words[0], words[2].lower()
            elif len(words) == 1:
                base, name = words[0], None
            else:
                raise DockerfileSyntaxError(f"line {line}: expected `FROM image [AS name]`, got {logical!r}")
            header = (line, substitute(base, global_args), name)
            body = []
        elif header is None:
            if keyword != "ARG":
                raise DockerfileSyntaxError(f"line {line}: {keyword} before the first FROM")
            name, sep, default = args.partition("=")
            if sep:  # an ARG without a default stays unresolved
                global_args[name.strip()] = default.strip().strip("\"'")
        else:
            body.append(Instruction(keyword, args, line, flags, bodies))
    close()
    if not stages:
        raise DockerfileSyntaxError("no FROM instruction")
    return Dockerfile(tuple(stages), global_args)


def key_values(instruction: Instruction) -> dict[str, str]:
    """The pairs of an ENV or LABEL instruction (`k=v k2="v 2"`, or the legacy `ENV k v`)."""
    words = shlex.split(instruction.args, posix=True)
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise DockerfileSyntaxError(f"line {instruction.line}: expected key=value or `key value`")
        return {words[0]: " ".join(words[1:])}
    pairs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileSyntaxError(f"line {instruction.line}: expected key=value, got {word!r}")
        pairs[key] = value
    return pairs


# ---------------------------------------------------------------------------------------------------
# The build context: .dockerignore patterns


@dataclass(frozen=True)
class IgnorePattern:
    exception: bool  # a `!pattern` line: matching paths are sent after all
    regex: re.Pattern[str]


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def ignore_patterns(text: str) -> list[IgnorePattern]:
    """The patterns of a .dockerignore file: `#` comment lines skipped, paths cleaned, `!` noted."""
    patterns: list[IgnorePattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or raw.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line[1:].strip() if exception else line
        cleaned = posixpath.normpath(line).lstrip("/")
        patterns.append(IgnorePattern(exception, re.compile(_glob_to_regex(cleaned))))
    return patterns


def is_ignored(path: str, patterns: Sequence[IgnorePattern]) -> bool:
    """Whether the builder leaves `path` (relative to the context) out: the last pattern matching
    the path or one of its parent folders decides, as in Docker's pattern matcher."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if any(pattern.regex.fullmatch(candidate) for candidate in candidates):
            ignored = not pattern.exception
    return ignored


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY or ADD."""
    words = instruction.exec_form() or shlex.split(instruction.args)
    return words[:-1], words[-1]


# ---------------------------------------------------------------------------------------------------
# Shell commands in RUN


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script as word lists, split at `&&`, `||`, `;`, `|`, `&` and
    line ends (a backslash-newline continues the line)."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|()\n"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def run_scripts(instruction: Instruction) -> list[str]:
    """The shell text a RUN executes: its command (shell or exec form) and heredoc bodies."""
    exec_form = instruction.exec_form()
    scripts = [shlex.join(exec_form) if exec_form is not None else instruction.args]
    return scripts + list(instruction.heredocs)


_PIP = re.compile(r"^pip(3(\.\d+)?)?$")
_PIP_SUBCOMMANDS = ("install", "wheel", "download")
# pip options whose value is the next word (so that word is not a requirement)
_PIP_VALUE_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-e",
    "--editable",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "-w",
    "--wheel-dir",
    "-d",
    "--dest",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--trusted-host",
    "--cache-dir",
    "--src",
    "--upgrade-strategy",
    "--progress-bar",
    "--config-settings",
    "-C",
    "--global-option",
    "--report",
    "--root-user-action",
}


@dataclass(frozen=True)
class PipCall:
    subcommand: str  # install, wheel or download
    words: tuple[str, ...]  # everything after the subcommand

    def options(self) -> dict[str, str]:
        """Options with their values (`--index-url URL` and `--index-url=URL` alike)."""
        found: dict[str, str] = {}
        words = list(self.words)
        for n, word in enumerate(words):
            if not word.startswith("-"):
                continue
            name, sep, value = word.partition("=")
            if not sep and name in _PIP_VALUE_OPTIONS and n + 1 < len(words):
                value = words[n + 1]
            found[name] = value
        return found

    def requirements(self) -> list[str]:
        """The requirement words: neither options nor option values."""
        found: list[str] = []
        skip = False
        for word in self.words:
            if skip:
                skip = False
            elif word.startswith("-"):
                skip = "=" not in word and word in _PIP_VALUE_OPTIONS
            else:
                found.append(word)
        return found


def pip_calls(script: str) -> list[PipCall]:
    """Every `pip ...`, `pipX ...`, `path/to/pip ...` and `python -m pip ...` in a shell script."""
    calls: list[PipCall] = []
    for words in shell_commands(script):
        rest: list[str] | None = None
        program = words[0].rsplit("/", 1)[-1]
        if _PIP.match(program):
            rest = words[1:]
        elif program.startswith("python") and words[1:3] == ["-m", "pip"]:
            rest = words[3:]
        if rest and rest[0] in _PIP_SUBCOMMANDS:
            calls.append(PipCall(rest[0], tuple(rest[1:])))
    return calls


_REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(\[[^\]]*\])?\s*(.*)$")


def requirement_name(word: str) -> tuple[str, str] | None:
    """(normalized name, version specifier) of a named requirement; None for paths and URLs."""
    if "/" in word or word.startswith(".") or "://" in word or word.startswith("$"):
        return None
    match = _REQUIREMENT.match(word)
    if not match:
        return None
    return re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(3).strip()


def is_exact_pin(specifier: str) -> bool:
    return re.fullmatch(r"===?\s*[0-9][0-9A-Za-z.+!-]*", specifier) is not None


# ---------------------------------------------------------------------------------------------------
# The checks


@dataclass(frozen=True)
class ImageSpec:
    """What one image must be: its subcommand, its ports and whether it is a CUDA variant."""

    subcommand: str
    ports: frozenset[int] = frozenset()
    cuda: bool = False


@dataclass(frozen=True)
class Problem:
    rule: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule}] {self.message}"


Check = Callable[[Dockerfile, ImageSpec], list[Problem]]

_EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")
_CUDA_REPOSITORIES = ("nvidia/cuda", "docker.io/nvidia/cuda", "nvcr.io/nvidia/cuda")
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference such as `ghcr.io:443/a/b:1.2@sha256:...`."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def image_pin_problem(reference: str) -> str | None:
    """Why an image reference is not pinned to an exact version, or None when it is."""
    if "$" in reference:
        return f"{reference!r} uses a variable with no default"
    repository, tag, digest = split_image(reference)
    if digest:
        return None
    if tag is None:
        return f"{reference!r} has no tag, so it means {repository}:latest"
    if tag == "latest":
        return f"{reference!r} uses the moving tag 'latest'"
    if not _EXACT_VERSION.search(tag):
        return f"{reference!r}: tag {tag!r} is not an exact version (want major.minor.patch)"
    return None


def check_pinned_bases(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    problems: list[Problem] = []
    for stage in df.stages:
        if df.stage_named(stage.base, stage.index) is None and stage.base != "scratch":
            why = image_pin_problem(stage.base)
            if why:
                problems.append(Problem("pinned-base", stage.line, f"FROM {why}"))
        for copy in stage.all("COPY") + stage.all("ADD"):
            source = copy.flags.get("from")
            if source is None or df.stage_named(source, stage.index) is not None:
                continue
            if not any(c in source for c in ":/@"):
                message = f"--from={source} names no earlier stage (a later one, or a typo?)"
                problems.append(Problem("pinned-base", copy.line, message))
                continue
            why = image_pin_problem(source)
            if why:
                problems.append(Problem("pinned-base", copy.line, f"{copy.keyword} --from {why}"))
    return problems


def check_multi_stage(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    if len(df.stages) >= 2:
        return []
    message = "one stage only: build in a builder stage and copy the result into a clean runtime stage"
    return [Problem("multi-stage", df.stages[0].line, message)]


def effective(df: Dockerfile, stage: Stage, keyword: str) -> Instruction | None:
    """The last `keyword` instruction in force in `stage`, inherited from earlier stages if need be."""
    for ancestor in df.lineage(stage):
        found = ancestor.all(keyword)
        if found:
            return found[-1]
    return None


def check_non_root(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    user = effective(df, df.final, "USER")
    if user is None:
        return [Problem("non-root", df.final.line, "the final stage sets no USER, so it runs as root")]
    uid, _, gid = user.args.strip().partition(":")
    problems: list[Problem] = []
    for what, value in (("uid", uid), ("gid", gid)):
        if what == "gid" and not value:
            continue
        if not value.isdigit():
            message = (
                f"USER {user.args.strip()}: {what} {value!r} is not numeric, so runAsNonRoot cannot verify it"
            )
            problems.append(Problem("non-root", user.line, message))
        elif int(value) == 0:
            problems.append(Problem("non-root", user.line, f"USER {user.args.strip()}: {what} 0 is root"))
    return problems


def check_entrypoint(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    entrypoint = effective(df, df.final, "ENTRYPOINT")
    if entrypoint is None:
        return [Problem("entrypoint", df.final.line, 'no ENTRYPOINT; want ["kubemaas"]')]
    words = entrypoint.exec_form()
    if words is None:
        message = f"ENTRYPOINT {entrypoint.args} is shell form: /bin/sh would get the signals, not kubemaas"
        return [Problem("entrypoint", entrypoint.line, message)]
    if words != ["kubemaas"]:
        return [Problem("entrypoint", entrypoint.line, f'ENTRYPOINT {words} is not ["kubemaas"]')]
    return []


def effective_cmd(df: Dockerfile, stage: Stage) -> Instruction | None:
    """CMD in force: a stage that sets ENTRYPOINT drops the CMD it would inherit (as Docker does)."""
    for ancestor in df.lineage(stage):
        if ancestor.all("CMD"):
            return ancestor.all("CMD")[-1]
        if ancestor.all("ENTRYPOINT"):
            return None
    return None


def check_cmd(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    cmd = effective_cmd(df, df.final)
    if cmd is None:
        return [Problem("cmd", df.final.line, f"no CMD; want one starting with {spec.subcommand!r}")]
    words = cmd.exec_form()
    if words is None:
        return [Problem("cmd", cmd.line, f"CMD {cmd.args} is shell form; want a JSON array")]
    if not words or words[0] != spec.subcommand:
        message = f"CMD {words} runs {words[0] if words else 'nothing'!r}, not {spec.subcommand!r}"
        return [Problem("cmd", cmd.line, message)]
    return []


def exposed_ports(df: Dockerfile, stage: Stage) -> set[int]:
    ports: set[int] = set()
    for ancestor in df.lineage(stage):
        for expose in ancestor.all("EXPOSE"):
            for word in expose.args.split():
                number, _, protocol = word.partition("/")
                if number.isdigit() and protocol in ("", "tcp"):
                    ports.add(int(number))
    return ports


def check_expose(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    missing = sorted(spec.ports - exposed_ports(df, df.final))
    if not missing:
        return []
    return [Problem("expose", df.final.line, f"the final stage does not EXPOSE {missing}")]


_REMOTE = re.compile(r"^(https?://|git@|git://|ssh://)")


def check_remote_add(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    problems: list[Problem] = []
    for stage in df.stages:
        for add in stage.all("ADD"):
            sources, _ = copy_sources(add)
            for source in sources:
                if _REMOTE.match(source):
                    message = f"ADD {source}: a remote source is unpinned and unverified; download in RUN with a checksum"
                    problems.append(Problem("remote-add", add.line, message))
    return problems


def pip_calls_in(df: Dockerfile) -> Iterator[tuple[Instruction, PipCall]]:
    for stage in df.stages:
        for run in stage.all("RUN"):
            for script in run_scripts(run):
                for call in pip_calls(script):
                    yield run, call


def check_pip_cache(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    problems: list[Problem] = []
    for run, call in pip_calls_in(df):
        if "--no-cache-dir" not in call.words:
            message = f"pip {call.subcommand} without --no-cache-dir leaves pip's cache in the layer"
            problems.append(Problem("pip-cache", run.line, message))
    return problems


def check_pip_pins(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    problems: list[Problem] = []
    for run, call in pip_calls_in(df):
        if call.subcommand != "install":
            continue
        for word in call.requirements():
            named = requirement_name(word)
            if named is not None and not is_exact_pin(named[1]):
                message = f"pip install {word!r}: {named[0]} is not pinned with =="
                problems.append(Problem("pip-pins", run.line, message))
    return problems


def torch_installs(df: Dockerfile) -> list[tuple[Instruction, PipCall]]:
    """The pip installs that name torch itself."""
    found: list[tuple[Instruction, PipCall]] = []
    for run, call in pip_calls_in(df):
        names = [requirement_name(word) for word in call.requirements()]
        if call.subcommand == "install" and any(n is not None and n[0] == "torch" for n in names):
            found.append((run, call))
    return found


def check_torch_index(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    """Where torch comes from. An install that names a torch already installed in the same stage
    with the same pin fetches nothing (pip keeps a satisfied requirement), so only the installs
    that can download torch are held to the index rule."""
    problems: list[Problem] = []
    for stage in df.stages:
        installed: str | None = None  # the pin of the torch this stage has installed so far
        for run, call in torch_installs(df):
            if run not in stage.instructions:
                continue
            options = call.options()
            primary = (options.get("--index-url") or options.get("-i") or "").rstrip("/")
            extra = options.get("--extra-index-url", "").rstrip("/")
            pins = {
                n[1] for n in map(requirement_name, call.requirements()) if n is not None and n[0] == "torch"
            }
            refetch = bool({"-U", "--upgrade", "--force-reinstall"} & set(options))
            if installed is not None and pins == {installed} and not refetch:
                continue
            if spec.cuda and PYTORCH_CPU_INDEX in (primary, extra):
                message = "a CUDA image installs torch from the CPU index: it would get CPU-only wheels"
                problems.append(Problem("torch-index", run.line, message))
            if not spec.cuda and primary != PYTORCH_CPU_INDEX:
                message = (
                    "a CPU image installs torch from PyPI (CUDA wheels, gigabytes); "
                    f"want --index-url {PYTORCH_CPU_INDEX}"
                )
                problems.append(Problem("torch-index", run.line, message))
            installed = next(iter(pins)) if len(pins) == 1 else None
    return problems


def check_cuda_base(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    root = df.root_image(df.final)
    repository, _, _ = split_image(root)
    on_cuda = repository in _CUDA_REPOSITORIES
    if spec.cuda and not on_cuda:
        return [Problem("cuda-base", df.final.line, f"a CUDA variant ships on {root!r}, not nvidia/cuda")]
    if not spec.cuda and on_cuda:
        return [Problem("cuda-base", df.final.line, f"a CPU variant ships on the CUDA image {root!r}")]
    return []


def final_env(df: Dockerfile) -> tuple[dict[str, str], dict[str, int]]:
    """ENV in force in the final stage (inherited from earlier stages), with the line of each."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for stage in reversed(df.lineage(df.final)):
        for env in stage.all("ENV"):
            for key, value in key_values(env).items():
                values[key], lines[key] = value, env.line
    return values, lines


_WRITABLE_ENV = re.compile(r"^(HOME|TMPDIR|XDG_[A-Z_]+_HOME|[A-Z0-9_]*CACHE_(DIR|PATH|HOME))$")


def check_env(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    env, lines = final_env(df)
    problems: list[Problem] = []
    for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):
        if env.get(key) != "1":
            problems.append(Problem("env", df.final.line, f"the final stage does not set {key}=1"))
    if "HOME" not in env:
        problems.append(Problem("env", df.final.line, "HOME is not set; want a directory under /tmp"))
    for key, value in env.items():
        if _WRITABLE_ENV.match(key) and not (value == "/tmp" or value.startswith("/tmp/")):
            message = f"{key}={value} is outside /tmp, the only writable place on a read-only root filesystem"
            problems.append(Problem("env", lines[key], message))
    return problems


def check_workdir(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    if effective(df, df.final, "WORKDIR") is None:
        return [Problem("workdir", df.final.line, "the final stage sets no WORKDIR")]
    return []


OCI_LABELS = (
    "org.opencontainers.image.source",
    "org.opencontainers.image.title",
    "org.opencontainers.image.version",
)


def final_labels(df: Dockerfile) -> dict[str, str]:
    labels: dict[str, str] = {}
    for stage in reversed(df.lineage(df.final)):
        for label in stage.all("LABEL"):
            labels.update(key_values(label))
    return labels


def check_labels(df: Dockerfile, spec: ImageSpec) -> list[Problem]:
    labels = final_labels(df)
    missing = [key for key in OCI_LABELS if not labels.get(key)]
    if not missing:
        return []
    return [Problem("labels", df.final.line, f"the final stage lacks the OCI labels {missing}")]


CHECKS: dict[str, Check] = {
    "pinned-base": check_pinned_bases,
    "multi-stage": check_multi_stage,
    "non-root": check_non_root,
    "entrypoint": check_entrypoint,
    "cmd": check_cmd,
    "expose": check_expose,
    "remote-add": check_remote_add,
    "pip-cache": check_pip_cache,
    "pip-pins": check_pip_pins,
    "cuda-base": check_cuda_base,
    "torch-index": check_torch_index,
    "env": check_env,
    "workdir": check_workdir,
    "labels": check_labels,
}


def lint(text: str, spec: ImageSpec, rules: Sequence[str] | None = None) -> list[Problem]:
    """Every problem `text` has as the image `spec`, for all rules or the ones named."""
    df = parse(text)
    problems: list[Problem] = []
    for rule in rules if rules is not None else CHECKS:
        problems += CHECKS[rule](df, spec)
    return problems
