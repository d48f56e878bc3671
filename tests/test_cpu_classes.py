"""Same answers on every CPU class the runtime serves, checked on emulated CPUs.

qemu-user runs (``jetson/qemu_setup.sh``; ``make test`` sets it up where it can, CI always):

* this machine's x86 Python as Haswell (AVX2, no AVX-512/VNNI) and Nehalem (SSE4 only), so a
  VNNI machine also exercises the AVX2 int8 kernels, and an AVX2 one the SSE ones;
* the same Python as a Tiger Lake (AVX-512 VNNI) in Bochs, which qemu cannot emulate
  (``jetson/bochs_vnni.py``: Debian's kernel and an initramfs of the files a host run touched);
* an arm64 Python with the runtime's aarch64 wheels as a Cortex-A76 (Raspberry Pi 5 core).

Each runs the bundle's selftest (pages and queries vs the PyTorch fp32 reference, judged by the
manifest's gates) and must also agree with this machine's own run; the aarch64 Python also runs
the CLI encode -> index -> search and the preprocessing, which must give this machine's bytes.
What emulation cannot say is how fast anything is on those CPUs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.cpu import CPU_CLASSES, cpu_class, cpu_host

ROOT = Path(__file__).resolve().parents[1]
QEMU_DIR = Path(os.environ.get("COLLFM2_QEMU_DIR", ROOT / "build" / "qemu"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TIMEOUT = 900


def _missing(what: str) -> None:
    """Skip on a developer machine; in CI the emulated CPUs are part of the suite, so fail."""
    msg = f"{what} (set it up with: sudo jetson/qemu_setup.sh build/qemu, or make test as root)"
    if IN_CI:
        pytest.fail(f"CI must check every CPU class: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def x86_host() -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the x86 CPU classes are emulated on x86 hosts only")
    if shutil.which("qemu-x86_64") is None:
        _missing("no qemu-x86_64")


@pytest.fixture(scope="module")
def arm64() -> Path:
    if not (QEMU_DIR / ".ready").is_file():
        _missing(f"no aarch64 sysroot in {QEMU_DIR}")
    return QEMU_DIR


def _x86(cpu: str, *args: str) -> subprocess.CompletedProcess:
    # OPENBLAS_CORETYPE (some hosts set it, e.g. Haswell) overrides OpenBLAS's own probe, so numpy's
    # import would run AVX2 kernels on the emulated Nehalem and die of SIGILL: the emulated CPU picks.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    return subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ROOT, env=env)  # fmt: skip


def _aarch64(qemu_dir: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "jetson" / "qemu_run.sh"), str(qemu_dir), *args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd)  # fmt: skip


def _json_out(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def host_selftest(tiny_bundle: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--json",
                          "--precision", "fp32,int8"], capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    return _json_out(res)


def _same_numbers(a: dict, b: dict, precision: str, tol: float, maxsim_tol: float) -> None:
    """Two machines' selftest reports agree to ``tol`` on the cosines and ``maxsim_tol`` on the
    MaxSim relative error (a max over ratios, so one near-zero score moves it most)."""
    ra, rb = a["results"][precision], b["results"][precision]
    for part in ("pages", "queries"):
        for key in ("mean_cos", "worst_cos"):
            assert abs(ra[part][key] - rb[part][key]) <= tol, (precision, part, key, ra[part], rb[part])
    assert abs(ra["maxsim_rel_error"] - rb["maxsim_rel_error"]) <= maxsim_tol, (ra["maxsim_rel_error"], rb)


def test_cpu_class_names() -> None:
    assert cpu_class() in CPU_CLASSES or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64")
    assert cpu_class("x86_64", {"AVX2", "AVX512F", "AVX512VNNI"}) == "x86_64-avx512vnni"
    assert cpu_class("x86_64", {"AVX2", "AVX512F"}) == "x86_64-avx2"  # AVX-512 without VNNI: AVX2 int8 kernels
    assert cpu_class("x86_64", {"SSE41"}) == "x86_64-sse"
    assert cpu_class("aarch64", {"ASIMD", "ASIMDDP"}) == "aarch64-dotprod"
    assert cpu_class("aarch64", {"ASIMD"}) == "aarch64"


def test_cpu_host_reports_the_features_that_pick_kernels() -> None:
    """Benchmarks and bundles record these; the bf16 flag decides whether the bf16 branch runs."""
    spr = cpu_host({"AVX2", "AVX512F", "AVX512VNNI", "AVX512BF16"})
    assert spr["bf16"] and spr["avx512"] and spr["int8_dot"] and isinstance(spr["cpu"], str) and spr["cpu"]
    epyc = cpu_host({"AVX2", "FMA3"})
    assert not epyc["bf16"] and not epyc["avx512"] and not epyc["int8_dot"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert (spr["cpu_class"], epyc["cpu_class"]) == ("x86_64-avx512vnni", "x86_64-avx2")


@pytest.mark.parametrize(("cpu", "expected"), [("Haswell", "x86_64-avx2"), ("Nehalem", "x86_64-sse")])
def test_selftest_on_emulated_x86(x86_host: None, tiny_bundle: Path, host_selftest: dict, cpu: str,
                                  expected: str) -> None:  # fmt: skip
    report = _json_out(_x86(cpu, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--json",
                                 "--precision", "fp32,int8"))  # fmt: skip
    assert report["cpu_class"] == expected and report["passed"], report
    # fp32 to float rounding; int8 to the rounding of the activation scales, never to the kernel's.
    _same_numbers(report, host_selftest, "fp32", 1e-6, 1e-5)
    _same_numbers(report, host_selftest, "int8", 2e-4, 5e-3)


def test_selftest_on_aarch64(arm64: Path, tiny_bundle: Path, host_selftest: dict) -> None:
    report = _json_out(_aarch64(arm64, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--json",
                                     "--precision", "fp32,int8"))  # fmt: skip
    assert report["machine"] == "aarch64" and report["cpu_class"] == "aarch64-dotprod" and report["passed"], report
    _same_numbers(report, host_selftest, "fp32", 1e-6, 1e-5)
    _same_numbers(report, host_selftest, "int8", 2e-4, 5e-3)


@pytest.fixture(scope="module")
def host_ov_selftest(tiny_bundle: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "runtime", "selftest", "--bundle", str(tiny_bundle), "--json",
                          "--engine", "ov-cpu", "--precision", "fp32,int8"], capture_output=True, text=True,
                         timeout=TIMEOUT, env={**os.environ, "COLLFM2_OV_CACHE": ""})  # fmt: skip
    return _json_out(res)


OV_ARGS = ("-m", "runtime", "selftest", "--json", "--engine", "ov-cpu", "--precision", "fp32,int8")


@pytest.mark.parametrize(("cpu", "expected"), [("Haswell", "x86_64-avx2"), ("Nehalem", "x86_64-sse")])
def test_openvino_selftest_on_emulated_x86(x86_host: None, tiny_bundle: Path, host_ov_selftest: dict, cpu: str,
                                           expected: str, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """OpenVINO's kernels differ by instruction set too (its JIT emits for the CPU it finds)."""
    monkeypatch.setenv("COLLFM2_OV_CACHE", "")  # a compiled blob is for the CPU that compiled it
    report = _json_out(_x86(cpu, *OV_ARGS, "--bundle", str(tiny_bundle)))
    assert report["cpu_class"] == expected and report["backend"] == "ov-cpu" and report["passed"], report
    _same_numbers(report, host_ov_selftest, "fp32", 1e-6, 1e-5)
    _same_numbers(report, host_ov_selftest, "int8", 2e-4, 5e-3)


def test_openvino_selftest_on_aarch64(arm64: Path, tiny_bundle: Path, host_ov_selftest: dict,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("COLLFM2_OV_CACHE", "")
    report = _json_out(_aarch64(arm64, *OV_ARGS, "--bundle", str(tiny_bundle)))
    assert report["machine"] == "aarch64" and report["backend"] == "ov-cpu" and report["passed"], report
    _same_numbers(report, host_ov_selftest, "fp32", 1e-6, 1e-5)
    _same_numbers(report, host_ov_selftest, "int8", 2e-4, 5e-3)


PROBE = ROOT / "jetson" / "int8_probe.py"


@pytest.fixture(scope="module")
def probe_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(PROBE.parent))
    try:
        from int8_probe import write_probe_models
    finally:
        sys.path.remove(str(PROBE.parent))
    return write_probe_models(tmp_path_factory.mktemp("int8-probe"))


@pytest.fixture(scope="module")
def exact_candidates() -> str:
    """sha256 of the candidate kernel's scores by the numpy fallback, which is exact integers."""
    import hashlib

    from runtime import scoring

    sys.path.insert(0, str(PROBE.parent))
    try:
        from int8_probe import candidate_inputs
    finally:
        sys.path.remove(str(PROBE.parent))
    saved = dict(scoring._sessions)
    scoring._sessions[("run", 1)] = scoring._sessions[("pieces", 1)] = None
    try:
        return hashlib.sha256(scoring.score_codes(*candidate_inputs(), threads=1).tobytes()).hexdigest()
    finally:
        scoring._sessions.clear()
        scoring._sessions.update(saved)


# The guarantee the int8 recipe and the search's candidate kernel rest on: with 7-bit weights (query
# codes) no kernel class clips, so every class computes the same integers. 8-bit ones clip on AVX2
# only (vpmaddubsw's int16 pair sums); the SSE4.1 kernel widens to int16 before multiplying, and
# VNNI / sdot accumulate in int32.
@pytest.mark.parametrize(("where", "expected", "w8_clips"), [
    ("host", None, None), ("Haswell", "x86_64-avx2", True), ("Nehalem", "x86_64-sse", False),
    ("aarch64", "aarch64-dotprod", False),
])  # fmt: skip
def test_int8_kernels_never_clip_the_recipes_weights(request: pytest.FixtureRequest, probe_models: Path, where: str,
                                                     expected: str | None, w8_clips: bool | None,
                                                     exact_candidates: str) -> None:  # fmt: skip
    if where == "host":
        report = _json_out(subprocess.run([sys.executable, str(PROBE), str(probe_models)], capture_output=True,
                                       text=True, timeout=TIMEOUT))  # fmt: skip
        # On an x86_64-avx2 machine the 8-bit case is not asserted: an AVX-VNNI laptop (Alder Lake
        # on) is classed so (numpy reports no AVX-VNNI) yet runs MLAS's exact VNNI kernel. Every
        # other class (AVX-512 VNNI included) must be exact.
        expected = cpu_class()
        w8_clips = None if expected == "x86_64-avx2" else False
    elif where == "aarch64":
        report = _json_out(_aarch64(request.getfixturevalue("arm64"), str(PROBE), str(probe_models)))
    else:
        request.getfixturevalue("x86_host")
        report = _json_out(_x86(where, str(PROBE), str(probe_models)))
    assert report["cpu_class"] == expected, report
    assert report["saturation"]["w7"] == 0.0, report
    assert w8_clips is None or (report["saturation"]["w8"] > 0.1) is w8_clips, report
    # the search's candidate kernel: same integers, same scores, bit for bit, on every class
    cand = report["candidates"]
    assert cand["q7"] == 0.0 and cand["sha256"] == exact_candidates, report
    assert w8_clips is None or (cand["q8"] > 0.1) is w8_clips, report


BOCHS = ROOT / "jetson" / "bochs_vnni.py"


def test_selftest_on_emulated_vnni(x86_host: None, tiny_bundle: Path, host_selftest: dict, probe_models: Path,
                                   exact_candidates: str, request: pytest.FixtureRequest) -> None:  # fmt: skip
    """AVX-512 VNNI, which qemu cannot emulate: Bochs runs this machine's Python on a Tiger Lake
    (``jetson/bochs_vnni.py``, a few minutes). VNNI must not clip even 8-bit weights (so its
    ``vpdpbusd`` kernel really ran), and the bundle must give this machine's numbers, with ONNX
    Runtime and, where it is installed, OpenVINO."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        _missing("Bochs needs root and apt")
    res = subprocess.run([sys.executable, str(BOCHS), "--timeout", "1500", "--", str(PROBE), str(probe_models),
                          str(tiny_bundle)], capture_output=True, text=True, timeout=1800, cwd=ROOT)  # fmt: skip
    report = _json_out(res)
    assert report["cpu_class"] == "x86_64-avx512vnni" and "AVX512VNNI" in report["features"], report
    assert report["saturation"] == {"w8": 0.0, "w7": 0.0}, report
    assert report["candidates"] == {"q7": 0.0, "q8": 0.0, "sha256": exact_candidates}, report
    selftest = report["selftest"]
    assert selftest["passed"], selftest
    _same_numbers(selftest, host_selftest, "fp32", 1e-6, 1e-5)
    _same_numbers(selftest, host_selftest, "int8", 2e-4, 5e-3)
    if importlib.util.find_spec("openvino") is not None:  # OpenVINO's VNNI kernels, same boot
        ov_report, host_ov = report["selftest_ov"], request.getfixturevalue("host_ov_selftest")
        assert ov_report["backend"] == "ov-cpu" and ov_report["passed"], ov_report
        _same_numbers(ov_report, host_ov, "fp32", 1e-6, 1e-5)
        _same_numbers(ov_report, host_ov, "int8", 2e-4, 5e-3)


PREPROCESS = """
import hashlib, platform, sys
import numpy as np
from runtime import ColLFM2Processor
proc = ColLFM2Processor.from_pretrained(sys.argv[1])
rng = np.random.default_rng(0)
h = hashlib.sha256()
for shape in ((512, 512, 3), (1754, 1240, 3), (300, 900, 3)):
    out = proc.process_images([rng.integers(0, 256, shape, dtype=np.uint8)])
    for k in sorted(out):
        h.update(np.ascontiguousarray(out[k]).tobytes())
print(platform.machine(), h.hexdigest())
"""


def test_preprocessing_is_bit_identical_on_aarch64(arm64: Path, tiny_ckpt: Path) -> None:
    """The aarch64 numpy/OpenBLAS wheels give this machine's bytes: resize, tiling, normalisation."""
    host = subprocess.run([sys.executable, "-c", PREPROCESS, str(tiny_ckpt)], capture_output=True, text=True)
    arm = _aarch64(arm64, "-c", PREPROCESS, str(tiny_ckpt))
    assert arm.returncode == 0, arm.stderr[-2000:]
    assert arm.stdout.split()[0] == "aarch64" and host.stdout.split()[0] == platform.machine()
    assert arm.stdout.split()[1] == host.stdout.split()[1]


def _pages(folder: Path) -> Path:
    from export.validate import synthetic_page

    folder.mkdir()
    for i, (h, w) in enumerate(((512, 512), (400, 900), (640, 480))):
        synthetic_page(h, w, seed=40 + i).save(folder / f"p{i}.png")
    return folder


def _cli_run(run, work: Path, bundle: Path, pages: Path, precision: str) -> tuple[list[dict], dict]:
    index = work / f"index-{precision}"
    npz = work / f"pages-{precision}.npz"
    enc = run("-m", "runtime", "encode", "--bundle", str(bundle), "--precision", precision, "--out", str(npz),
              "--dtype", "float32", str(pages))  # fmt: skip
    assert enc.returncode == 0, enc.stderr[-2000:]
    add = run("-m", "runtime", "index", "add", "--index", str(index), "--bundle", str(bundle),
              "--precision", precision, "--no-progress", str(pages))  # fmt: skip
    assert add.returncode == 0 and "added 3 page(s)" in add.stdout, add.stdout + add.stderr[-2000:]
    found = run("-m", "runtime", "search", "--index", str(index), "-k", "3", "--json", "total amount due")
    assert found.returncode == 0, found.stderr[-2000:]
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(found.stdout), arrays


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_cli_encode_index_search_on_aarch64(arm64: Path, tiny_bundle: Path, tmp_path: Path, precision: str) -> None:
    """The Raspberry Pi path end to end: the same bundle, pages and query give the same hits, and
    scores and vectors within the precision's rounding of this machine's."""
    pages = _pages(tmp_path / "pages")
    host_dir, arm_dir = tmp_path / "host", tmp_path / "arm"
    host_dir.mkdir()
    arm_dir.mkdir()

    def host(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)

    hits_x86, enc_x86 = _cli_run(host, host_dir, tiny_bundle, pages, precision)
    hits_arm, enc_arm = _cli_run(lambda *a: _aarch64(arm64, *a), arm_dir, tiny_bundle, pages, precision)
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert [h["path"] for h in hits_arm] == [h["path"] for h in hits_x86] or precision != "fp32"
    by_path = {h["path"]: h["score"] for h in hits_x86}
    for h in hits_arm:
        assert abs(h["score"] - by_path[h["path"]]) <= tol * abs(by_path[h["path"]]), (hits_arm, hits_x86)
    assert list(enc_arm["names"]) == list(enc_x86["names"])
    assert np.array_equal(enc_arm["offsets"], enc_x86["offsets"])
    diff = np.abs(enc_arm["embeddings"] - enc_x86["embeddings"]).max()
    assert diff <= (1e-5 if precision == "fp32" else 2e-2), diff
    digest = hashlib.sha256(enc_arm["offsets"].tobytes()).hexdigest()
    assert digest == hashlib.sha256(enc_x86["offsets"].tobytes()).hexdigest()
