"""README.md and docs/*.md against the code: every command they show uses options its script has and
paths the repository has (or the code writes), every relative link resolves, every import exists.

Commands come from fenced shell blocks and from inline code that starts like a command
(`python core/demo.py …`). Options are read from each script's own ``--help``, all scripts in one
subprocess so torch is imported once.
"""
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# SPEC §3: the released files a command may name under model/ (fetched on demand, so never in the tree).
RELEASES = {"stage1_skip_sad_52.9.pth", "stage1_sad_54.4.pth", "stage1_sad_57.1.pth",
            "stage2_norm_balance_sad_57.9.pth", "stage1_norm_balance_sad_58.7.pth",
            "stage0_norm_balance_sad_62.0.pth"}
# What core/train.py writes into its --saveDir (train.sh: model/stage<N>/), and what it reads first.
RUN_FILES = re.compile(r"(ckpt_best|ckpt_last|ckpt_e\d+)\.pth|train\.log|config\.json")
MODEL_INPUTS = {"vgg_state_dict.pth", *RELEASES}
# The shell wrappers pass their extra arguments on to these entry points.
WRAPPED = {"train.sh": "core/train.py", "deploy.sh": "core/test.py"}
# Options whose value is a place the command writes to (anything under model/ or result/ is a fine choice).
OUTPUT_FLAGS = {"--saveDir", "--out", "--out_dir", "--json", "--csv", "--output", "--testResDir", "--logFile",
                "--train_log", "SAVE_DIR", "LOG_FILE", "TEST_RES_DIR"}
# First components of the paths that stand for the user's own files.
PLACEHOLDERS = {"DATA", "data", "photos", "trimaps", "masks", "out", "path", "DIR", "…"}
SHELL_WORDS = {"for", "do", "done", "then", "fi", "if", "in"}
ELLIPSES = {"…", "...", "[", "]"}


# --------------------------------------------------------------------------- #
# Reading the markdown
# --------------------------------------------------------------------------- #
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:python\s+(?:-m\s+)?(?:core|tools|bench)\b|bash\s+\S+\.sh\b|torchrun\s)")


def shell_blocks(text):
    return [body for lang, body in FENCE.findall(text) if lang in ("bash", "sh", "shell", "console")]


def inline_commands(text):
    prose = FENCE.sub("", text)
    return [span.replace("\n", " ") for span in INLINE.findall(prose) if COMMAND_START.match(span.strip())]


def commands(script):
    """Shell text → a list of token lists, one per simple command (comments, ;, &&, |, loops split off)."""
    script = re.sub(r"\\\n", " ", script)
    out = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        current = []
        for tok in lex:
            if tok in (";", "&&", "||", "|", "&"):
                out.append(current)
                current = []
            else:
                current.append(tok)
        out.append(current)
    cleaned = []
    for toks in out:
        toks = [t for t in toks if t not in ELLIPSES]
        while toks and toks[0] in ("do", "then"):
            toks = toks[1:]
        if toks and toks[0] not in SHELL_WORDS:
            cleaned.append(toks)
    return cleaned


def all_commands():
    """(file, command text, tokens) for every command in README.md and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for source in shell_blocks(text) + inline_commands(text):
            for toks in commands(source):
                found.append((path.relative_to(ROOT).as_posix(), " ".join(toks), toks))
    return found


# --------------------------------------------------------------------------- #
# What a command means
# --------------------------------------------------------------------------- #
def parse(toks):
    """→ (env assignments, script path or None, the tokens that are the script's own arguments)."""
    env = {}
    i = 0
    while i < len(toks) and re.fullmatch(r"[A-Za-z_]\w*=.*", toks[i]):
        name, value = toks[i].split("=", 1)
        env[name] = value
        i += 1
    rest = toks[i:]
    if not rest:
        return env, None, []
    prog = rest[0]
    if prog == "python" and len(rest) > 1:
        if rest[1] == "-m" and len(rest) > 2:
            module = rest[2]
            script = module.replace(".", "/") + ".py"
            return env, (script if module.split(".")[0] in ("core", "tools", "bench") else None), rest[3:]
        return env, rest[1], rest[2:]
    if prog == "bash" and len(rest) > 1 and rest[1].endswith(".sh"):
        return env, rest[1], rest[2:]
    if prog == "torchrun":  # torchrun's own options come before the script
        for j, tok in enumerate(rest[1:], 1):
            if tok.endswith(".py"):
                return env, tok, rest[j + 1:]
    return env, None, rest[1:]


def script_help(scripts):
    """{script: its --help text}, all run in one interpreter."""
    code = (
        "import contextlib, io, json, runpy, sys\n"
        "sys.path.insert(0, '.')\n"
        "out = {}\n"
        "for s in sys.argv[1:]:\n"
        "    sys.argv = [s, '--help']; buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try: runpy.run_path(s, run_name='__main__')\n"
        "        except SystemExit: pass\n"
        "    out[s] = buf.getvalue()\n"
        "sys.__stdout__.write(json.dumps(out))\n")
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, *sorted(scripts)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def option_strings(help_text):
    """The option strings argparse lists (lines indented by two spaces that start with '-')."""
    opts = set()
    for line in help_text.splitlines():
        m = re.match(r"  (-\S.*?)(?:\s{2,}|$)", line)
        if m:
            for part in m.group(1).split(", "):
                opts.add(part.split()[0].split("=")[0])
    return opts


def env_names(shell_script):
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", (ROOT / shell_script).read_text()))


def looks_like_path(tok):
    """A token naming a path inside or below the working folder (bare names are the user's own files)."""
    return "/" in tok and not re.match(r"\w+://", tok) and not tok.startswith(("-", "/"))


def normal(path):
    """Shell variables become "1" (so model/stage$STAGE reads model/stage1); no trailing slash."""
    return re.sub(r"\$\{?\w+\}?", "1", path).rstrip("/")


def path_problem(path, output, declared):
    """Why ``path`` is not a repository path, a path the code writes, or a placeholder (None when it is)."""
    path = normal(path)
    parts = path.split("/")
    if (ROOT / path).exists() or parts[0] in PLACEHOLDERS or path.startswith(("1/", "~")):
        return None  # in the repository, or the user's own (DATA/…, $DATA_ROOT/…, photos/…)
    if parts[0] not in ("model", "result"):
        return "not in the repository, not under model/ or result/, and not a placeholder"
    if output:
        return None  # a folder or file the command writes, under model/ or result/
    if parts[0] == "model":
        if len(parts) == 2 and parts[1] in MODEL_INPUTS:
            return None
        folder = "/".join(parts[:-1])
        if (re.fullmatch(r"model/stage[0-3]", folder) or folder in declared) and RUN_FILES.fullmatch(parts[-1]):
            return None
        return "under model/ but not a released file, model/vgg_state_dict.pth, or a file train.py writes " \
               "into model/stage<N>/ (or a --saveDir the docs use)"
    folder = "/".join(parts[:2])
    if folder in declared or re.fullmatch(r"result/comp1k_stage[0-3]", folder):  # deploy.sh's SAVE_DIR
        return None
    return "under result/ but no command in the docs writes it"


def check(found, helps):
    """Every problem of ``found`` (see all_commands), as 'file: command: what'."""
    problems = []
    declared = set()
    parsed = []
    for where, text, toks in found:
        env, script, args = parse(toks)
        parsed.append((where, text, toks, env, script, args))
        for flag, value in [*env.items(), *zip(args, args[1:])]:
            if flag in ("SAVE_DIR", "--saveDir", "--out_dir"):
                declared.add(normal(value))
        for arg in args:
            if arg.startswith(("--saveDir=", "--out_dir=")):
                declared.add(normal(arg.split("=", 1)[1]))
    for where, text, toks, env, script, args in parsed:
        say = lambda what: problems.append(f"{where}: {text}: {what}")  # noqa: E731
        if script is not None:
            target = WRAPPED.get(script, script)
            if not (ROOT / script).is_file():
                say(f"{script} does not exist")
                continue
            if script in WRAPPED:
                unknown = set(env) - env_names(script)
                if unknown:
                    say(f"{script} reads no variable {', '.join(sorted(unknown))}")
            opts = option_strings(helps[target])
            for arg in args:
                if arg.startswith("-") and not re.fullmatch(r"-\d.*", arg):
                    flag = arg.split("=", 1)[0]
                    if flag not in opts:
                        say(f"{flag} is not an option of {target}")
        values = [(name, value) for name, value in env.items()]
        for i, tok in enumerate(toks[len(env):]):
            if tok.startswith("--") and "=" in tok:
                values.append(tuple(tok.split("=", 1)))
            else:
                before = toks[len(env) + i - 1] if i else ""
                values.append((before if before.startswith("--") else None, tok))
        for flag, value in values:
            if looks_like_path(value):
                why = path_problem(value, flag in OUTPUT_FLAGS, declared)
                if why:
                    say(f"{value}: {why}")
    return problems


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def helps():
    scripts = set()
    for _, _, toks in all_commands():
        script = parse(toks)[1]
        if script and (ROOT / script).is_file():
            scripts.add(WRAPPED.get(script, script))
    return script_help(scripts)


def test_every_documented_command_uses_real_options_and_paths(helps):
    found = all_commands()
    scripts = {parse(t)[1] for _, _, t in found}
    # the commands a reader is most likely to copy are all among those checked
    assert {"core/demo.py", "core/test.py", "core/train.py", "train.sh", "deploy.sh", "tools/app.py",
            "tools/composite.py", "tools/export.py", "tools/evaluate.py", "core/train.py"} <= scripts
    assert any(t[0] == "torchrun" for _, _, t in found)
    assert len(found) > 60
    assert all(len(option_strings(h)) > 3 for h in helps.values()), "a --help printed no options"
    assert check(found, helps) == []


def test_a_wrong_flag_or_path_is_caught(helps):
    """The checker itself: planted mistakes of each kind are reported, their fixed forms are not."""
    def problems(md):
        found = [("x.md", " ".join(t), t) for s in shell_blocks(md) + inline_commands(md) for t in commands(s)]
        return check(found, helps)

    assert problems("```bash\npython core/demo.py --image photo.jpg --rgba\n```\n") == []
    planted = {
        "```bash\npython core/demo.py --image photo.jpg --rgbaa\n```\n": "--rgbaa is not an option of core/demo.py",
        "```bash\npython tools/export.py --resume runs/stage2/ckpt_best.pth\n```\n": "runs/stage2/ckpt_best.pth: not",
        "```bash\nDATA_ROOT=D CKPT=runs/stage1/ckpt_best.pth bash deploy.sh\n```\n": "runs/stage1/ckpt_best.pth",
        "```bash\nDATA_ROOT=D bash train.sh --nEpoch 2\n```\n": "--nEpoch is not an option of core/train.py",
        "```bash\nDATA_ROOT=D EPOCHS=2 bash train.sh\n```\n": "train.sh reads no variable EPOCHS",
        "```bash\npython core/tset.py --imgDir photos/\n```\n": "core/tset.py does not exist",
        "```bash\npython -m core.test --resume model/stage1/ckpt_bst.pth\n```\n": "model/stage1/ckpt_bst.pth: under model/",
        "```bash\npython core/demo.py --resume model/mine.pth  # a comment --not_checked\n```\n": "model/mine.pth",
        "```bash\nfor p in a b; do\n  python tools/evaluate.py --predDir result/nowhere_$p\ndone\n```\n": "result/nowhere_$p: under result/",
        "Run `python core/demo.py --imag\nphoto.jpg` inline.\n": "--imag is not an option",
    }
    for md, expected in planted.items():
        found = problems(md)
        assert len(found) == 1 and expected in found[0], (md, found)


# Links ---------------------------------------------------------------------- #
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


def broken_links(path):
    bad = []
    for target in LINK.findall(INLINE.sub("", FENCE.sub("", path.read_text()))):
        if re.match(r"\w+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{path.name}: {target}: no such heading")
    return bad


def test_every_relative_link_resolves(tmp_path):
    assert [p.name for p in DOCS[:1]] == ["README.md"] and len(DOCS) >= 8
    assert sum(len(LINK.findall(p.read_text())) for p in DOCS) > 30
    assert [b for p in DOCS for b in broken_links(p)] == []
    # and the check can fail
    md = tmp_path / "a.md"
    md.write_text("# A title\n[ok](#a-title) [gone](nowhere.md) [bad anchor](#b-title) ![x](a.md)\n")
    assert broken_links(md) == ["a.md: nowhere.md: no such file", "a.md: #b-title: no such heading"]
    assert slug("Reduced precision (`--precision bf16`)") == "reduced-precision---precision-bf16"
    assert slug("6. A CPU smoke run on synthetic data") == "6-a-cpu-smoke-run-on-synthetic-data"


def resolves(dotted):
    """Whether ``core.x.y`` names a module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_documented_python_names_exist():
    """`from core.x import a, b` in the docs' Python blocks, and `core.x.y` in their prose, name things
    that exist (so a rename in the code cannot leave the manual behind)."""
    names = []
    for path in DOCS:
        text = path.read_text()
        for lang, body in FENCE.findall(text):
            if lang == "python":
                for module, items in re.findall(r"^from ((?:core|tools)\.[\w.]+) import ([\w, ]+)$", body, re.M):
                    names += [f"{module}.{item.strip()}" for item in items.split(",")]
        names += [m for span in INLINE.findall(FENCE.sub("", text))
                  for m in re.findall(r"^((?:core|tools)\.[A-Za-z_][\w.]*[A-Za-z0-9_])", span)]
    assert len(names) >= 10
    assert [name for name in names if not resolves(name)] == []
    assert not resolves("core.inference.no_such_function") and not resolves("core.no_such_module")


def test_readme_is_short_and_keeps_its_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    blocks = "\n".join(shell_blocks(readme))
    for command in ("python -m pytest -q tests", "python core/demo.py", "bash deploy.sh", "python tools/app.py"):
        assert command in blocks, command
    assert "python -m pytest -q tests" in (ROOT / ".ci/run").read_text()  # CI runs what the README says
