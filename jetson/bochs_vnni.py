#!/usr/bin/env python3
"""Run this machine's own Python on an emulated AVX-512 VNNI CPU (Bochs 2.7, Tiger Lake model).

qemu's TCG has no AVX-512, so an AVX2-only machine cannot otherwise see what ONNX Runtime's
``vpdpbusd`` kernels compute. Bochs interprets every instruction, VNNI included.

    sudo python jetson/bochs_vnni.py [--work build/bochs] -- jetson/int8_probe.py PROBE_DIR BUNDLE

1. ARGS run once here under a tracer that lists every module and shared library they touched.
   Those files, at their own absolute paths, go into an initramfs with a static busybox and an
   ``/init``, so the guest runs the very interpreter and wheels this machine has. Paths named in
   ARGS go in whole.
2. Debian's kernel boots from an isolinux CD in Bochs with ``cpu: model=tigerlake``. The kernel
   is trixie's ``linux-image-amd64``, fetched with ``apt-get download`` against a private source
   list. Bookworm's 6.1 double-faults in Bochs right after ``vfs_caches_init``.
3. The guest runs ``python -S ARGS`` with the traced ``sys.path``. Its stdout comes back over the
   serial port between markers and is printed here, and its exit status is this script's.

Two Bochs CPUID leaf-0xD faults would make the kernel switch XSAVE, and with it AVX, off: PKRU is
listed with size 0, and the compacted (XSAVES/XSAVEC) size is wrong. ``clearcpuid=pku,ospke,
xsaves,xsavec`` keeps the kernel on standard-format XSAVE with the AVX-512 state, which is all
user space needs. ``ips`` matches the TSC rate the model reports, so guest time runs true.
Needs root and Debian's registry; one core, tens of minutes. Speed under Bochs means nothing.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bochs", "bochsbios", "vgabios", "isolinux", "syslinux-common", "xorriso",
            "busybox-static", "cpio")  # fmt: skip
KERNEL_SUITE = "trixie"
BEGIN, END = "=====collfm2-guest-begin=====", "=====collfm2-guest-end rc="

TRACER = r"""
import atexit, importlib.util, os, runpy, sys
out = os.environ.pop("COLLFM2_TRACE_OUT")
ran = []  # what runpy ran as __main__ is back out of sys.modules by exit time
def dump():
    files = {os.path.abspath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    files.update(ran)
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].strip())
    with open(out, "w") as fh:
        fh.write("\n".join(sorted(files)) + "\n")
        fh.write("PATH " + os.pathsep.join(p for p in sys.path if p) + "\n")
atexit.register(dump)
args = sys.argv[1:]
if args[:1] == ["-m"]:
    sys.argv = [args[1]] + args[2:]
    spec = importlib.util.find_spec(args[1])
    if spec and spec.submodule_search_locations:
        spec = importlib.util.find_spec(args[1] + ".__main__")
    ran += [spec.origin] if spec and spec.origin else []
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name="__main__")
"""

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export HOME=/root PATH=/bin LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu PYTHONPATH='{pythonpath}'
export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 COLLFM2_OV_CACHE=
cd '{cwd}'
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\\n' | grep -E '^(avx2|avx512f|avx512_vnni)$')
echo "guest flags:" $flags > /dev/ttyS0
echo '{begin}' > /dev/ttyS0
'{python}' -S {args} > /tmp/out 2>/tmp/err
rc=$?
cat /tmp/out > /dev/ttyS0
tail -c 3000 /tmp/err > /dev/ttyS0
echo '{end}'$rc > /dev/ttyS0
sleep 3
poweroff -f
"""

BOCHSRC = """cpu: model=tigerlake, count=1, ips=2419200000, reset_on_triple_fault=1
memory: guest={mem}, host={mem}
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path=boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=serial.txt
display_library: rfb, options="timeout=0"
log: bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
clock: sync=none
"""
CMDLINE = "console=ttyS0,115200 quiet loglevel=1 mitigations=off clearcpuid=pku,ospke,xsaves,xsavec nokaslr"


def _log(msg: str) -> None:
    print(f"bochs_vnni: {msg}", file=sys.stderr, flush=True)


def ensure_packages() -> None:
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        _log(f"installing {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", *missing]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env).returncode:  # stale lists on a fresh machine
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def kernel(work: Path) -> Path:
    """trixie's amd64 kernel image, unpacked once into WORK/kernel."""
    found = sorted(work.glob("kernel/boot/vmlinuz-*"))
    if found:
        return found[-1]
    apt = work / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                      f"http://deb.debian.org/debian {KERNEL_SUITE} main\n")  # fmt: skip
    opts = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}"]  # fmt: skip
    subprocess.run(["apt-get", *opts, "update", "-q"], check=True, capture_output=True)
    deps = subprocess.run(["apt-cache", *opts, "depends", "linux-image-amd64"], capture_output=True, text=True).stdout
    match = re.search(r"Depends: (linux-image-\S+)", deps)
    if not match:
        raise SystemExit(f"bochs_vnni: {KERNEL_SUITE} has no linux-image-amd64")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", *opts, "download", match.group(1)], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("*.deb"))
        (work / "kernel").mkdir(exist_ok=True)
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(work / "kernel"), "./boot"], stdin=tar.stdout, check=True)
        tar.wait()
    return sorted(work.glob("kernel/boot/vmlinuz-*"))[-1]


def trace(args: list[str], work: Path) -> tuple[list[str], str]:
    out = work / "trace.txt"
    # Without OpenVINO's compile cache: a run served from it never loads the ONNX frontend, so the
    # trace would miss it and the guest (with no cache) could not compile. INIT clears it too.
    env = {**os.environ, "COLLFM2_TRACE_OUT": str(out), "COLLFM2_OV_CACHE": ""}
    res = subprocess.run([sys.executable, "-c", TRACER, *args], env=env, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"bochs_vnni: the command already fails here (rc {res.returncode})")
    lines = out.read_text().splitlines()
    return [x for x in lines if not x.startswith("PATH ")], next(x[5:] for x in lines if x.startswith("PATH "))


def _at(path: Path, rootfs: Path) -> Path:
    """Where PATH goes under ROOTFS: its parent resolved here, so nothing is ever written through a
    link (a link's absolute target would point out of ROOTFS, into this machine)."""
    return rootfs / os.path.realpath(path.parent).lstrip("/") / path.name


def _link(path: Path, rootfs: Path) -> None:
    at = _at(path, rootfs)
    if not at.is_symlink():
        at.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.readlink(path), at)


def _copy(src: str, rootfs: Path) -> None:
    """Copy SRC under ROOTFS at its own absolute path; every link on the way, directories' and the
    file's own (each hop), is made again as a link, so the guest resolves the same names."""
    p = Path(src)
    for _ in range(16):
        for i in range(2, len(p.parts)):
            if Path(*p.parts[:i]).is_symlink():
                _link(Path(*p.parts[:i]), rootfs)
        if p.is_symlink():
            _link(p, rootfs)
            target = os.readlink(p)
            p = Path(target) if os.path.isabs(target) else Path(os.path.realpath(p.parent)) / target
            continue
        at = _at(p, rootfs)
        if at.exists():
            return
        at.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir():
            shutil.copytree(p, at, symlinks=True)
        elif p.is_file():
            shutil.copy2(p, at)
        return


def build_rootfs(files: list[str], whole: list[str], rootfs: Path) -> None:
    libdirs = set()
    for f in files + whole:
        _copy(f, rootfs)
        if f.endswith(".py"):  # the compiled form too, so the guest need not compile the stdlib
            cache = Path(f).parent / "__pycache__"
            for c in cache.glob(Path(f).stem + ".cpython-*.pyc") if cache.is_dir() else []:
                _copy(str(c), rootfs)
        if ".so" in Path(f).name:
            libdirs.add(Path(f).parent)
    # The loader looks libraries up by soname: bring the links that point at what was mapped.
    mapped = {os.path.realpath(f) for f in files}
    for d in libdirs:
        for link in d.iterdir():
            if link.is_symlink() and os.path.realpath(link) in mapped:
                _copy(str(link), rootfs)
    # The interpreter by the name it was started with (a venv's link chain), and its pyvenv.cfg.
    for f in (sys.executable, os.path.join(sys.prefix, "pyvenv.cfg"), "/lib64/ld-linux-x86-64.so.2",
              "/usr/lib/locale/C.utf8"):  # fmt: skip
        if os.path.exists(f):
            _copy(f, rootfs)
    (rootfs / "bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for d in ("proc", "sys", "dev", "tmp", "root", os.path.realpath(Path.cwd()).lstrip("/")):
        (rootfs / d).mkdir(parents=True, exist_ok=True)


def _cpio_gz(rootfs: Path, out: Path) -> None:
    names = subprocess.run(["find", "."], cwd=rootfs, capture_output=True, check=True).stdout
    data = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, input=names, capture_output=True,
                          check=True).stdout  # fmt: skip
    out.write_bytes(gzip.compress(data, compresslevel=1))


def boot_iso(work: Path, vmlinuz: Path, rootfs: Path) -> Path:
    iso = work / "iso"
    shutil.rmtree(iso, ignore_errors=True)
    (iso / "isolinux").mkdir(parents=True)
    _cpio_gz(rootfs, iso / "initrd.gz")
    shutil.copy2("/usr/lib/ISOLINUX/isolinux.bin", iso / "isolinux")
    shutil.copy2("/usr/lib/syslinux/modules/bios/ldlinux.c32", iso / "isolinux")
    shutil.copy2(vmlinuz, iso / "vmlinuz")
    (iso / "isolinux" / "isolinux.cfg").write_text(
        f"DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n"
        f"  APPEND initrd=/initrd.gz {CMDLINE} rdinit=/init\n"
    )
    out = work / "boot.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-b", "isolinux/isolinux.bin",
                    "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(iso)],
                   check=True, capture_output=True)  # fmt: skip
    _log(f"initramfs {(iso / 'initrd.gz').stat().st_size / 2**20:.0f} MiB")
    return out


def run_bochs(work: Path, mem: int, timeout: float) -> tuple[int | None, str]:
    (work / "bochsrc").write_text(BOCHSRC.format(mem=mem))
    (work / "dbg.rc").write_text("c\nquit\n")  # Debian's Bochs starts in its debugger: continue at once
    serial = work / "serial.txt"
    serial.unlink(missing_ok=True)
    # The display is a VNC server that waits for no client and drops its screen when none is there.
    # The term display wrote its screen to a pty nobody read: once that filled (a slow host, more
    # redraws per guest second) Bochs blocked for good. Its own network namespace keeps the VNC
    # port off the host's network, where the host allows one.
    bochs = ["bochs", "-q", "-f", "bochsrc", "-rc", "dbg.rc"]
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        bochs = ["unshare", "--net", *bochs]
    else:
        _log("no network namespace here: Bochs's display listens on a VNC port (5900 on) while it runs")
    proc = subprocess.Popen(bochs, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    t0, text = time.monotonic(), ""
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            time.sleep(5)
            text = serial.read_text(errors="replace") if serial.exists() else ""
            m = re.search(re.escape(END) + r"(\d+)", text)
            if m:
                return int(m.group(1)), text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    return None, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bochs", help="work folder (default build/bochs)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before Bochs is stopped (default 3600)")
    ap.add_argument("--mem", type=int, default=1536, help="guest memory in MiB (default 1536)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the Python arguments (-m MODULE ... or SCRIPT ...)")
    ns = ap.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    if not args:
        ap.error("give the Python arguments after --")
    if os.geteuid() != 0:
        ap.error("needs root (apt-get for Bochs and the kernel)")
    # Paths become absolute (the guest has only what is packed); a module name after -m stays a name.
    args = [a if (i and args[i - 1] == "-m") or not Path(a).exists() else str(Path(a).resolve())
            for i, a in enumerate(args)]  # fmt: skip
    work = ns.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    vmlinuz = kernel(work)
    t0 = time.monotonic()
    files, pythonpath = trace(args, work)
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    build_rootfs(files, [a for a in args if a.startswith("/")], rootfs)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    (rootfs / "init").write_text(INIT.format(pythonpath=pythonpath, cwd=Path.cwd(), begin=BEGIN, end=END,
                                             python=sys.executable, args=quoted))  # fmt: skip
    (rootfs / "init").chmod(0o755)
    boot_iso(work, vmlinuz, rootfs)
    _log(f"booting {vmlinuz.name} on an emulated Tiger Lake; serial console in {work / 'serial.txt'}")
    rc, text = run_bochs(work, ns.mem, ns.timeout)
    head, _, body = text.partition(BEGIN)
    flags = re.findall(r"guest flags: ([^\r\n]*)", head)
    _log(f"guest CPU flags: {flags[-1].strip() if flags else '(none seen)'}; {time.monotonic() - t0:.0f} s in all")
    if rc is None:
        _log(f"no result from the guest (see {work / 'serial.txt'} and {work / 'bochs.log'})")
        return 124
    sys.stdout.write(body.split(END)[0].lstrip("\r\n").replace("\r\n", "\n"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
