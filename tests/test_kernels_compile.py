"""Every CUDA source under accel/kernels compiles for sm_80 (A100) and sm_90 (H100/H200), without a GPU.

CuPy compiles the sources at run time with NVRTC; CI has no GPU, so a kernel that does not compile
would only be found on a GPU machine. Here ``nvcc -arch=sm_XX -cubin`` compiles each file ahead of
time (warnings are errors), and the checks below keep the sources NVRTC-compatible (no host
headers) and in step with the names the loader launches. Without nvcc the compile cases are
skipped with the reason; the source checks always run. Also here: the CPU-side logic of the loader
(chunk tables, radix pass schedule) and a NumPy model of topk.cu's radix select with its tie rule,
checked against reference.topk (the algorithm; the CUDA code itself runs only on a GPU, in the
``gpu``-marked tests and the registry's ``kernel.*`` entries).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from twinsparse.accel import kernels
import twinsparse.reference.topk as RT

SOURCES = sorted(kernels.KERNEL_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and Path(root, "bin", "nvcc").is_file():
            return str(Path(root, "bin", "nvcc"))
    return None


NVCC = _nvcc()


def test_every_source_is_known_to_the_loader():
    assert {p.name for p in SOURCES} == set(kernels.KERNELS), \
        "accel/kernels/*.cu and accel.kernels.KERNELS must name the same files"
    assert {"masked_sgd.cu", "topk.cu", "nm_mask.cu", "dst.cu", "merge.cu"} <= set(kernels.KERNELS)


@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_source_is_nvrtc_compatible_and_defines_the_launched_kernels(src):
    raw = src.read_text()
    # a source may include only headers next to it ("x.cuh"), which the loader inlines
    for inc in re.findall(r'^\s*#\s*include\s*(.*)$', raw, re.M):
        assert re.fullmatch(r'"[\w.]+\.cuh"', inc.strip()) and (kernels.KERNEL_DIR / inc.strip('" ')).is_file(), \
            f"{src.name} includes {inc}: only local .cuh headers are allowed (NVRTC gets no include path)"
    text = kernels.source(src.name)
    # NVRTC (CuPy's RawModule) has no host or CUDA runtime headers: what it compiles includes nothing
    assert not re.search(r"^\s*#\s*include", text, re.M), f"{src.name} includes a header; NVRTC has none"
    # a kernel: extern "C" __global__ void [__launch_bounds__(...)] name(, or KIND name( where KIND
    # is a macro of a source that expands to that prefix
    prefix = r'extern\s+"C"\s+__global__\s+void(?:\s+__launch_bounds__\([^)]*\))?'
    kinds = re.findall(r"#define\s+(\w+)\s+" + prefix + r"\s*$", text, re.M)
    defined = set(re.findall(prefix + r"\s+(\w+)\s*\(", text))
    for kind in kinds:
        defined |= set(re.findall(r"^" + kind + r"\s+(\w+)\s*\(", text, re.M))
    missing = set(kernels.KERNELS[src.name]) - defined
    assert not missing, f"{src.name} does not define kernel(s) {sorted(missing)} that the loader launches"
    assert text.lstrip().startswith("//"), f"{src.name} must open with a header comment (what it computes, why correct)"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_compiles_with_nvcc(src, arch, tmp_path):
    if NVCC is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): the CUDA kernels cannot be "
                    "compile-checked on this machine; install the CUDA toolkit to run this check")
    out = tmp_path / f"{src.stem}_{arch}.cubin"
    expanded = tmp_path / src.name                 # the text NVRTC gets: local headers inlined
    expanded.write_text(kernels.source(src.name))
    cmd = [NVCC, f"-arch={arch}", "-cubin", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-warn-spills",
           "-o", str(out), str(expanded)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    assert out.stat().st_size > 0
    # every kernel the loader launches is an entry point of the cubin (ELF symbol names)
    blob = out.read_bytes()
    for name in kernels.KERNELS[src.name]:
        assert name.encode() in blob, f"{name} missing from the {arch} cubin of {src.name}"


# ----------------------------------------------------------------------------- loader logic (CPU)

def test_kernels_are_not_used_on_cpu():
    """CPU tensors never reach a kernel (call sites test .is_cuda first; usable() says no)."""
    assert not kernels.usable(torch.zeros(3))
    with kernels.require(), pytest.raises(RuntimeError, match="CUDA"):
        kernels.usable(torch.zeros(3))


@given(st.lists(st.integers(0, 3 * kernels.CHUNK + 5), min_size=1, max_size=6))
def test_chunk_plan_covers_every_element_once(sizes):
    h = kernels.chunk_plan_host(sizes)
    for s, n in enumerate(sizes):
        sel = h["seg"] == s
        starts, ends = h["start"][sel], h["end"][sel]
        covered = np.zeros(n, np.int64)
        for a, b in zip(starts, ends):
            assert 0 <= a < b <= n and b - a <= kernels.CHUNK
            covered[a:b] += 1
        assert np.all(covered == 1)
        if sel.any():
            first = np.flatnonzero(sel)[0]
            assert np.all(h["first"][sel] == first)


def test_radix_passes_cover_every_key_bit():
    for dtype, bits in ((torch.float32, 32), (torch.float64, 64)):
        passes = kernels.radix_passes(dtype)
        covered = []
        for shift, width in passes:
            assert 1 <= width <= kernels.RADIX_BITS
            covered += list(range(shift, shift + width))
        assert sorted(covered) == list(range(bits))                          # every bit exactly once
        assert [sh for sh, _ in passes] == sorted((sh for sh, _ in passes), reverse=True)  # MSD first
        assert passes[0][0] + passes[0][1] == bits and passes[-1][0] == 0
    src = (kernels.KERNEL_DIR / "topk.cu").read_text()
    assert f"#define RADIX_BITS {kernels.RADIX_BITS}" in src


def _order_key(x: np.ndarray) -> np.ndarray:
    """topk.cu's order_key on NumPy: unsigned keys whose order is the float order, -0.0 == +0.0."""
    ut = np.uint32 if x.dtype == np.float32 else np.uint64
    bits = 8 * x.itemsize
    u = x.view(ut).copy()
    sign = ut(1) << ut(bits - 1)
    u[u == sign] = 0
    neg = (u & sign) != 0
    return np.where(neg, ~u, u | sign)


def _radix_select_model(scores, cand, k, dtype, chunk=7):
    """Step for step what topk.cu's chain computes for one segment (sequentially): the digit-0
    histogram, the filter (certain keeps, the bucket compacted per chunk in index order), the
    refine passes on the bucket, the tie count per chunk and the resolve with its tie ranks."""
    keys = _order_key(scores)
    bits = 8 * scores.itemsize
    passes = kernels.radix_passes(dtype)

    def high(hb):
        return 0 if hb >= bits else ((1 << bits) - 1) & ~((1 << hb) - 1)

    def scan(hist, prefix, krem, shift):
        above = 0
        for d in range(len(hist) - 1, -1, -1):
            if above < krem <= above + hist[d]:
                return prefix | (d << shift), krem - above
            above += hist[d]
        raise AssertionError("no digit found: k exceeds the candidates")

    def digit(key, shift, width):
        return (int(key) >> shift) & ((1 << width) - 1)

    out = np.zeros(scores.shape, bool)
    if k == 0:                                          # krem 0 at every level: nothing is kept
        return out
    (s0, w0), (s1, w1) = passes[0], passes[1]
    hist = np.bincount([digit(x, s0, w0) for x in keys[cand]], minlength=1 << w0)
    prefix, krem = scan(hist, 0, k, s0)
    hm = high(s1 + w1)
    chunks = []                                         # per chunk: the bucket (offset, key) in index order
    for lo in range(0, scores.size, chunk):
        entries = []
        for i in range(lo, min(lo + chunk, scores.size)):
            if cand[i]:
                top = int(keys[i]) & hm
                out[i] = top > prefix
                if top == prefix:
                    entries.append((i - lo, int(keys[i])))
        chunks.append(entries)
    for shift, width in passes[1:]:
        hm = high(shift + width)
        hist = np.bincount([digit(key, shift, width) for e in chunks for _, key in e if key & hm == prefix],
                           minlength=1 << width)
        prefix, krem = scan(hist, prefix, krem, shift)
    ties = [sum(key == prefix for _, key in e) for e in chunks]
    for c, e in enumerate(chunks):
        rank = sum(ties[:c])
        for off, key in e:
            if key > prefix or (key == prefix and rank < krem):
                out[c * chunk + off] = True
            rank += key == prefix
    return out


@st.composite
def _select_case(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 60))
    pool = draw(st.lists(st.floats(-4, 4, width=8 * np.dtype(dtype).itemsize), min_size=1, max_size=4))
    pool += [0.0, -0.0]
    s = np.array([pool[i] for i in draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n))], dtype)
    if draw(st.booleans()):
        s = s + draw(hnp.arrays(dtype, n, elements=st.floats(-2.0**-10, 2.0**-10, width=8 * np.dtype(dtype).itemsize)))
    cand = draw(hnp.arrays(bool, n))
    return s, cand, draw(st.integers(0, int(cand.sum())))


@given(_select_case())
def test_radix_select_model_matches_the_reference_tie_rule(case):
    s, cand, k = case
    tdt = torch.float32 if s.dtype == np.float32 else torch.float64
    got = _radix_select_model(s, cand, k, tdt)
    assert np.array_equal(got, RT.topk_within(s, cand, k))


def test_source_inlines_each_local_header_once(tmp_path, monkeypatch):
    (tmp_path / "h.cuh").write_text("#define FROM_HEADER 1\n")
    (tmp_path / "k.cu").write_text('// k\n#include "h.cuh"\n  # include "h.cuh"\nint x = FROM_HEADER;\n')
    (tmp_path / "bad.cu").write_text('#include "missing.cuh"\n')
    monkeypatch.setattr(kernels.loader, "KERNEL_DIR", tmp_path)
    text = kernels.source("k.cu")
    assert text.count("#define FROM_HEADER 1") == 1 and "#include" not in text
    with pytest.raises(FileNotFoundError, match="missing.cuh"):
        kernels.source("bad.cu")


def test_host_constants_match_the_sources():
    """The numbers the wrappers size launches with are the ones the kernels were written for."""
    from twinsparse.accel.kernels import merge, nm, topk
    src = {f: (kernels.KERNEL_DIR / f).read_text() for f in ("topk.cu", "nm_mask.cu", "merge.cu")}
    assert f"#define TOPK_MIN_BLOCKS {topk.BLOCKS_PER_SM}" in src["topk.cu"]
    assert f"#define TOPK_FILTER_MIN_BLOCKS {topk.FILTER_BLOCKS_PER_SM}" in src["topk.cu"]
    assert f"#define TOPK_THREADS {kernels.THREADS}" in src["topk.cu"]
    assert f"#define NM_CHUNK_GROUPS {nm.NM_CHUNK_GROUPS}" in src["nm_mask.cu"]
    assert f"#define UMG_CHANNELS {kernels.THREADS // 32}" in src["merge.cu"] and merge.UMG_CHANNELS == kernels.THREADS // 32
    assert topk.TOPK_CHUNK <= 65536                         # 16-bit offsets within a chunk


def ptxas_report(src: Path, arch: str, tmp_path: Path) -> dict:
    """{kernel: (registers, shared bytes, spill bytes)} from ``nvcc -Xptxas -v`` on the text NVRTC gets."""
    expanded = tmp_path / src.name
    expanded.write_text(kernels.source(src.name))
    r = subprocess.run([NVCC, f"-arch={arch}", "-cubin", "-std=c++17", "-Xptxas", "-v", "-o",
                        str(tmp_path / "out.cubin"), str(expanded)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out, name, spill = {}, None, 0
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name, spill = m.group(1), 0
            continue
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            spill = int(m.group(1))
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line)
        if m and name:
            out[name] = (int(m.group(1)), int(m.group(2) or 0), spill)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_persistent_grid_kernels_fit_their_resident_blocks(arch, tmp_path):
    """topk.cu launches BLOCKS_PER_SM (filter: FILTER_BLOCKS_PER_SM) blocks per multiprocessor and
    relies on all of them being resident (__launch_bounds__): registers and shared memory allow it."""
    if NVCC is None:
        pytest.skip("nvcc not found: the resource report needs it")
    from twinsparse.accel.kernels import topk
    rep = ptxas_report(kernels.KERNEL_DIR / "topk.cu", arch, tmp_path)
    assert set(rep) == set(kernels.KERNELS["topk.cu"])
    for name, (regs, smem, spill) in rep.items():
        blocks = topk.FILTER_BLOCKS_PER_SM if "_filter_" in name else topk.BLOCKS_PER_SM
        assert regs * kernels.THREADS * blocks <= 65536, (name, regs)
        assert smem * blocks <= 227 * 1024 and spill == 0, (name, smem, spill)
