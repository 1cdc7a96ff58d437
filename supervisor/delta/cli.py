"""rdiff-compatible command line: ``python -m supervisor.delta [OPTIONS] signature|delta|patch FILES``.

The arguments follow rdiff's order and defaults so scripts can switch between the two:

    signature [BASIS [SIGNATURE]]     delta SIGNATURE [NEWFILE [DELTA]]     patch BASIS [DELTA [NEWFILE]]

``serve [OPTIONS]`` runs the image delta server instead (supervisor/delta/server.py, docs/DELTAS.md).

A missing file or ``-`` means stdin/stdout (the patch basis must be a real file: COPY seeks in it).
Like rdiff, an existing output file is only replaced with ``-f``. Unlike rdiff, an output file
appears only when the command succeeds: it is written to a temporary file next to it and renamed,
so a failed patch never leaves something that looks like an image (stdout cannot be taken back).

Exit status: 0 success, 1 usage or I/O error, 2 malformed delta or signature (one-line message).
A progress bar goes to stderr when stderr is a terminal (after half a second) or with --progress.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, NoReturn

from supervisor.delta import rsync

PROG = "python -m supervisor.delta"
MAGICS = {  # (--hash, --rollsum) -> signature magic
    ("blake2", "rabinkarp"): rsync.RS_RK_BLAKE2_SIG_MAGIC,
    ("blake2", "rollsum"): rsync.RS_BLAKE2_SIG_MAGIC,
    ("md4", "rabinkarp"): rsync.RS_RK_MD4_SIG_MAGIC,
    ("md4", "rollsum"): rsync.RS_MD4_SIG_MAGIC,
}
FILE_ARGS = {  # command -> (required, names of the optional ones)
    "signature": ((), ("BASIS", "SIGNATURE")),
    "delta": (("SIGNATURE",), ("NEWFILE", "DELTA")),
    "patch": (("BASIS",), ("DELTA", "NEWFILE")),
}


class UsageError(Exception):
    """Bad arguments: exit status 1, like an I/O error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="librsync signatures, deltas and patches, compatible with rdiff.",
        usage=(
            f"{PROG} [OPTIONS] signature [BASIS [SIGNATURE]]\n"
            f"       {PROG} [OPTIONS] delta SIGNATURE [NEWFILE [DELTA]]\n"
            f"       {PROG} [OPTIONS] patch BASIS [DELTA [NEWFILE]]"
        ),
    )
    parser.add_argument("command", choices=sorted(FILE_ARGS))
    parser.add_argument("files", nargs="*", help="files in rdiff's order; '-' or missing: stdin/stdout")
    parser.add_argument("-f", "--force", action="store_true", help="replace existing output files")
    parser.add_argument("-s", "--statistics", action="store_true", help="print a summary to stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="accepted for rdiff compatibility")
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s ({rsync.IMPLEMENTATION})")
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr even if not a TTY")
    sig = parser.add_argument_group("signature generation")
    sig.add_argument("-H", "--hash", choices=("blake2", "md4"), default="blake2")
    sig.add_argument("-R", "--rollsum", choices=("rabinkarp", "rollsum"), default="rabinkarp")
    sig.add_argument("-b", "--block-size", type=int, default=0, metavar="BYTES", help="0: sqrt(basis size)")
    sig.add_argument("-S", "--sum-size", type=int, default=0, metavar="BYTES", help="0: full, -1: minimum")
    io_opts = parser.add_argument_group("I/O (accepted for rdiff compatibility; buffers are fixed)")
    io_opts.add_argument("-I", "--input-size", type=int, metavar="BYTES")
    io_opts.add_argument("-O", "--output-size", type=int, metavar="BYTES")
    return parser


class Progress:
    """A one-line bar on stderr: input consumed (of its size, when known) and output produced.

    It always counts (for --statistics); it draws only when asked to, and then only after delay
    seconds, so short runs stay quiet on a terminal.
    """

    def __init__(self, label: str, total: int | None, *, draw: bool, delay: float) -> None:
        self.label = label
        self.total = total
        self.draw = draw
        self.start = time.monotonic()
        self.next_draw = self.start + delay
        self.drawn = False
        self.last = (0, 0)

    def __call__(self, consumed: int, produced: int) -> None:
        self.last = (consumed, produced)
        if self.draw:
            now = time.monotonic()
            if now >= self.next_draw:
                self.next_draw = now + 0.1
                self._draw(now)

    def _draw(self, now: float) -> None:
        consumed, produced = self.last
        rate = max(consumed, produced) / max(now - self.start, 1e-6) / 2**20
        bar = ""
        if self.total:
            frac = min(consumed / self.total, 1.0)
            bar = f"[{'#' * int(frac * 30):<30}] {frac * 100:3.0f}% "
        sys.stderr.write(
            f"\r{self.label} {bar}{consumed / 2**20:8.1f} MiB in {produced / 2**20:8.1f} MiB out"
            f" {rate:7.1f} MiB/s"
        )
        sys.stderr.flush()
        self.drawn = True

    def finish(self, complete: bool) -> None:
        """End the line; a --progress run that succeeded always shows its final state."""
        if self.draw and (self.drawn or complete):
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _size(f: BinaryIO) -> int | None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            return st.st_size
    return None


@contextlib.contextmanager
def _input(path: str | None, *, seekable: bool = False) -> Iterator[BinaryIO]:
    if path in (None, "-"):
        if seekable:
            raise UsageError("the basis must be a file, not stdin: patching seeks in it")
        yield sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield f


@contextlib.contextmanager
def _output(path: str | None, force: bool) -> Iterator[BinaryIO]:
    """stdout, or a temp file renamed over path only if the body succeeds."""
    if path in (None, "-"):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path}: file exists (use -f to replace it)")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what open() would have given it
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _run(
    args: argparse.Namespace, files: list[str | None], progress_for: Callable[[BinaryIO], Progress]
) -> int:
    """Run one command; return the bytes written."""
    if args.command == "signature":
        magic = MAGICS[(args.hash, args.rollsum)]
        with _input(files[0]) as basis, _output(files[1], args.force) as out:
            return rsync.signature(
                basis,
                out,
                block_len=args.block_size,
                strong_len=args.sum_size,
                magic=magic,
                progress=progress_for(basis),
            )
    if args.command == "delta":
        with _input(files[0]) as sig_file:
            sig = rsync.load_signature(sig_file)
        with _input(files[1]) as new, _output(files[2], args.force) as out:
            return rsync.delta(sig, new, out, progress=progress_for(new))
    with (
        _input(files[0], seekable=True) as basis,
        _input(files[1]) as delta_file,
        _output(files[2], args.force) as out,
    ):
        return rsync.patch(basis, delta_file, out, progress=progress_for(delta_file))


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["serve"]:  # the delta server has options of its own
        from supervisor.delta.server import main as serve

        return serve(args_list[1:])
    try:
        args = build_parser().parse_intermixed_args(argv)
        required, optional = FILE_ARGS[args.command]
        if not len(required) <= len(args.files) <= len(required) + len(optional):
            names = " ".join([*required, *(f"[{n}" for n in optional)]) + "]" * len(optional)
            raise UsageError(f"usage: {args.command} {names}")
        if args.block_size < 0:
            raise UsageError("--block-size must be >= 0")
        files: list[str | None] = [*args.files, *[None] * (3 - len(args.files))]
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1

    bars: list[Progress] = []
    draw = args.progress or sys.stderr.isatty()

    def progress_for(f: BinaryIO) -> Progress:
        bars.append(Progress(args.command, _size(f), draw=draw, delay=0.0 if args.progress else 0.5))
        return bars[-1]

    start = time.monotonic()
    status, message = 0, ""
    try:
        produced = _run(args, files, progress_for)
    except rsync.DeltaFormatError as exc:
        status, message = 2, str(exc)
    except (UsageError, ValueError, OSError) as exc:  # ValueError: -b/-S values rdiff would refuse too
        status, message = 1, str(exc)
    for bar in bars:
        bar.finish(complete=status == 0 and args.progress)
    if status:
        print(f"{PROG}: {args.command}: {message}", file=sys.stderr)
        return status
    if args.statistics:
        consumed = bars[-1].last[0] if bars else 0
        print(
            f"{PROG}: {args.command} statistics: {consumed} bytes in, {produced} bytes out, "
            f"{time.monotonic() - start:.3f} s ({rsync.IMPLEMENTATION})",
            file=sys.stderr,
        )
    return 0
