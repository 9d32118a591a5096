"""hash-grid encoder backends: Triton against the pure-PyTorch reference (Triton's CPU interpreter
in a subprocess here, real kernels on CUDA), backend selection and its errors, identical
state_dicts, and tinycudann's own formula (a PyTorch copy pinned on hand-computed values on the
CPU; the real tinycudann compared against it on CUDA when it is installed)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorelift.builders import build_named
from scorelift.errors import ConfigError
from scorelift.library.hash_encoding_tcnn import (
    TcnnGridSpec,
    tables_to_tcnn_params,
    tcnn_layout,
    tcnn_n_params,
    tcnn_reference_encoding,
    tcnn_row_sources,
)
from scorelift.plugins.geometry.hash_grid import BACKENDS, PRIMES, HashEncoding

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_TCNN = importlib.util.find_spec("tinycudann") is not None
CUDA = torch.cuda.is_available()
SMALL = dict(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, mlp_width=16)
THREESTUDIO = dict(n_levels=16, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447269237440378)

# HashEncoding(n_levels, F, log2 T, N_min, b, seed) cases for the Triton agreement checks
AGREEMENT_CASES = [
    (5, 2, 9, 3, 1.9, 0),  # N_l = 3, 5, 10, 20, 39: levels 0-1 dense, 2-4 hashed (T = 512)
    (2, 2, 10, 1000, 4.0, 1),  # corners up to 4000: y * 2654435761 > 2^32, the full int64 hash
    (3, 3, 8, 2, 2.0, 2),  # F = 3 (the kernels pad feature lanes to 4)
]


def make(**over):
    return build_named("geometry", "hash-grid", {**SMALL, **over})


def agreement_points(n: int, resolutions: list[int], gen: torch.Generator) -> torch.Tensor:
    """Random points plus corners/faces of the unit cube (coordinates exactly 0 and 1) and points
    on cell boundaries of every level."""
    special = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 1.0, 1.0], [0.5, 0.5, 1.0], [1.0, 0.25, 0.0]]
    )
    bounds = torch.stack([torch.tensor([1.0 / r, 2.0 / r, (r - 1.0) / r]) for r in resolutions])
    return torch.cat([special, bounds, torch.rand(n, 3, generator=gen)])


def run_agreement(device: str) -> list[dict]:
    """Triton vs ``forward_torch``: outputs and table gradients for AGREEMENT_CASES, level 1 masked.
    Raises AssertionError on a mismatch; returns the max errors (run in a subprocess on the CPU)."""
    from scorelift.library.hash_encoding_triton import triton_hash_encoding

    results = []
    for case in AGREEMENT_CASES:
        gen = torch.Generator().manual_seed(case[-1])
        enc = HashEncoding(*case)
        with torch.no_grad():
            for table in enc.tables:
                table.copy_(torch.randn(table.shape, generator=gen))
            enc.level_mask[1] = 0.0
        enc = enc.to(device)
        feats = enc.features_per_level
        pts = agreement_points(300, enc.resolutions, gen).to(device)
        grad_out = torch.randn(pts.shape[0], enc.output_dim, generator=gen).to(device)

        ref = enc.forward_torch(pts)
        ref.backward(grad_out)
        ref_grads = [t.grad.clone() for t in enc.tables]
        for t in enc.tables:
            t.grad = None
        out = triton_hash_encoding(pts, enc.tables, enc.resolutions, enc.level_mask)
        out.backward(grad_out)

        out_err = (out - ref).abs().max().item()
        assert out_err <= 1e-6 * max(1.0, ref.abs().max().item()), (case, out_err)
        assert torch.all(out[:, feats:2 * feats] == 0)  # the masked level
        grad_errs = []
        for level, (table, ref_grad) in enumerate(zip(enc.tables, ref_grads)):
            err = (table.grad - ref_grad).abs().max().item()
            assert err <= 4e-6 * max(1.0, ref_grad.abs().max().item()), (case, level, err)
            grad_errs.append(err)
        assert torch.all(enc.tables[1].grad == 0) and enc.tables[0].grad.abs().sum() > 0
        results.append({"case": list(case), "out_err": out_err, "grad_err": max(grad_errs)})
    return results


# ---------------------------------------------------------------- Triton vs the PyTorch reference


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_matches_torch_in_the_interpreter():
    """The same kernels in Triton's CPU interpreter (TRITON_INTERPRET=1 must be set before triton
    is imported, hence the subprocess)."""
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']; "
        "import test_hash_encoding_backends as t; print('RESULT', json.dumps(t.run_agreement('cpu')))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    assert len(json.loads(line[7:])) == len(AGREEMENT_CASES)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(not CUDA, reason="CUDA is not available")
def test_triton_matches_torch_on_cuda():
    run_agreement("cuda")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(not CUDA, reason="CUDA is not available")
def test_triton_geometry_matches_torch_geometry_on_cuda():
    """Whole geometry at threestudio's sizes: density, features and every gradient."""
    geoms = {b: make(**THREESTUDIO, backend=b).cuda() for b in ("torch", "triton", "auto")}
    pts = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)).cuda() * 2.2 - 1.1
    assert geoms["auto"].encoding.active_backend(pts) == "triton"
    outs, grads = {}, {}
    for name, geom in geoms.items():
        geom.load_state_dict(geoms["torch"].state_dict())
        with torch.no_grad():  # tables away from their 1e-4 init so the comparison means something
            for i, t in enumerate(geom.encoding.tables):
                t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).cuda())
        out = geom(pts)
        (out.density.sum() + out.features.sum()).backward()
        outs[name] = (out.density, out.features)
        grads[name] = {k: p.grad for k, p in geom.named_parameters()}
    for name in ("triton", "auto"):
        torch.testing.assert_close(outs[name][0], outs["torch"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[name][1], outs["torch"][1], rtol=1e-5, atol=1e-5)
        for k, g in grads["torch"].items():
            torch.testing.assert_close(grads[name][k], g, rtol=1e-4, atol=1e-5 * max(1.0, g.abs().max().item()))


def test_triton_refuses_points_that_need_gradients():
    """The kernels give table gradients only: points requiring grad fail loudly (before any Triton
    import), and backend=auto routes such points to the PyTorch encoder."""
    from scorelift.library.hash_encoding_triton import triton_hash_encoding

    enc = HashEncoding(2, 2, 8, 4, 2.0, 0)
    pts = torch.rand(8, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="points require grad"):
        triton_hash_encoding(pts, enc.tables, enc.resolutions, enc.level_mask)
    auto = HashEncoding(2, 2, 8, 4, 2.0, 0, backend="auto")
    assert auto.active_backend(pts) == "torch"


def test_backend_modules_import_without_triton_or_tinycudann(monkeypatch):
    """No top-level triton / tinycudann import, and the modules import with both blocked."""
    for path in ("plugins/geometry/hash_grid.py", "framework/library/hash_encoding_triton.py",
                 "framework/library/hash_encoding_tcnn.py"):
        tree = ast.parse((ROOT / path).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(str(n).split(".")[0] in ("triton", "tinycudann") for n in names), (path, names)

    class Block:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in ("triton", "tinycudann"):
                raise ImportError(f"{fullname} blocked by the test")
            return None

    monkeypatch.setattr(sys, "meta_path", [Block()] + sys.meta_path)
    for mod in ("triton", "tinycudann", "scorelift.library.hash_encoding_triton", "scorelift.library.hash_encoding_tcnn"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    importlib.import_module("scorelift.library.hash_encoding_triton")
    importlib.import_module("scorelift.library.hash_encoding_tcnn")


# ---------------------------------------------------------------- backend selection


def test_auto_uses_torch_on_cpu_and_matches_the_torch_backend():
    auto, plain = make(backend="auto"), make(backend="torch")
    pts = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    assert auto.encoding.active_backend(pts) == "torch"
    a, b = auto(pts), plain(pts)
    assert torch.equal(a.density, b.density) and torch.equal(a.features, b.features)


def test_unknown_backend_lists_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        make(backend="cuda")
    for word in ["'cuda'", "auto", "torch", "triton", "tcnn"]:
        assert word in str(err.value)
    assert BACKENDS == ("auto", "torch", "triton", "tcnn")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_explicit_triton_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError) as err:
        make(backend="triton")
    for word in ["backend='triton'", "CUDA", "backend=auto", "tcnn"]:
        assert word in str(err.value)


@pytest.mark.skipif(CUDA and HAS_TCNN, reason="tinycudann can run here")
def test_explicit_tcnn_that_cannot_run_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        make(backend="tcnn")
    msg = str(err.value)
    assert "backend='tcnn'" in msg and "backend=auto" in msg
    assert ("tinycudann" in msg) if not HAS_TCNN else ("CUDA" in msg)


@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_explicit_triton_refuses_cpu_points(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    geom = make(backend="triton")  # still on the CPU
    with pytest.raises(ConfigError, match="CUDA tensors only"):
        geom(torch.rand(4, 3))


def test_state_dict_is_identical_across_backends():
    backends = ["torch", "auto"] + (["triton"] if CUDA and HAS_TRITON else []) + (["tcnn"] if CUDA and HAS_TCNN else [])
    states = {b: make(backend=b).state_dict() for b in backends}
    ref = states["torch"]
    assert any(k.startswith("encoding.tables.") for k in ref)
    for b, state in states.items():
        assert list(state) == list(ref), b
        assert all(torch.equal(state[k], ref[k]) for k in ref), b
    other = make(backend="auto", init_seed=3)
    other.load_state_dict(ref, strict=True)  # checkpoints move between backends
    assert torch.equal(other.encoding.tables[0], ref["encoding.tables.0"])


# ---------------------------------------------------------------- tinycudann's formula


def test_tcnn_layout_resolution_and_padding():
    """scale_l = b^l N_min - 1 in float32, res = ceil(scale) + 1, dense rows padded to 8."""
    spec = TcnnGridSpec(n_levels=3, features_per_level=2, log2_hashmap_size=12, base_resolution=3, per_level_scale=1.5)
    got = [(lv.scale, lv.resolution, lv.rows, lv.offset, lv.hashed) for lv in tcnn_layout(spec)]
    assert got == [(2.0, 3, 32, 0, False), (3.5, 5, 128, 32, False), (5.75, 7, 344, 160, False)]
    assert tcnn_n_params(spec) == (32 + 128 + 344) * 2
    # ours for the same config: N_l = floor(3 * 1.5^l) = 3, 4, 6 cells -> 4, 5, 7 points per axis
    assert [n + 1 for n in HashEncoding(3, 2, 12, 3, 1.5, 0).resolutions] == [4, 5, 7]

    ts = tcnn_layout(TcnnGridSpec(16, 2, 19, 16, 1.447269237440378))
    assert (ts[0].scale, ts[0].resolution, ts[0].rows, ts[0].hashed) == (15.0, 16, 4096, False)  # ours: 17^3
    assert (ts[1].resolution, ts[1].rows, ts[1].offset) == (24, 24**3, 4096)
    assert (ts[3].resolution, ts[3].rows) == (49, 117656)  # 49^3 = 117649 padded to a multiple of 8
    assert [lv.hashed for lv in ts] == [False] * 5 + [True] * 11 and all(lv.rows == 2**19 for lv in ts[5:])


def test_tcnn_reference_formula_on_hand_computed_values():
    """2 levels, F = 1, T = 16, N_min = 2, b = 2: level 0 scale 1, res 2, 8 dense rows; level 1
    scale 3, res 4, 64 > 16 -> hashed (rows 8..23). Params 0..23 so values are row numbers."""
    spec = TcnnGridSpec(n_levels=2, features_per_level=1, log2_hashmap_size=4, base_resolution=2, per_level_scale=2.0)
    assert [(lv.scale, lv.resolution, lv.rows, lv.offset, lv.hashed) for lv in tcnn_layout(spec)] == [
        (1.0, 2, 8, 0, False), (3.0, 4, 16, 8, True)
    ]
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.5, 0.75], [1.0, 1.0, 1.0]])
    out = tcnn_reference_encoding(pts, torch.arange(24.0), spec)
    # (0,0,0): pos = 0 * scale + 0.5, corner 0, all weights 1/8.
    #   level 0: rows x + 2y + 4z over {0,1}^3 = 0..7 -> 3.5
    #   level 1: hash mod 16 (2654435761 = 1, 805459861 = 5 mod 16): x ^ y ^ 5z -> rows 0,1,1,0,5,4,4,5 -> 8 + 2.5
    # (0.25, 0.5, 0.75): level 0 pos (0.75, 1, 1.25): corner (0,1,1), frac (0.75, 0, 0.25):
    #   rows 6 (w .1875), 7 (.5625), (0 + 2 + 8) % 8 = 2 (.0625), 11 % 8 = 3 (.1875) -> 5.75
    #   level 1 pos (1.25, 2, 2.75): corner (1,2,2), frac (.25, 0, .75): (1,2,2) -> 1^2^10 = 9 (w .1875),
    #   (2,2,2) -> 10 (.0625), (1,2,3) -> 1^2^15 = 12 (.5625), (2,2,3) -> 15 (.1875) -> 8 + 11.875
    # (1,1,1): level 0 pos 1.5: corners {1,2}^3 run past the 2-point grid and wrap: rows
    #   (x + 2y + 4z) % 8 = 7,0,1,2,3,4,5,6 -> 3.5; level 1 pos 3.5: corners {3,4}^3 (res 4: also
    #   one past) -> rows 15,8,8,15,4,3,3,4 -> 8 + 7.5
    expected = torch.tensor([[3.5, 10.5], [5.75, 19.875], [3.5, 15.5]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_our_tables_map_onto_tcnns_layout():
    """Dense tcnn rows take our row for the same integer grid point; others are held at 0."""
    enc = HashEncoding(3, 2, 12, 3, 1.5, 0)  # ours: 4, 5, 7 points per axis; tcnn: 3, 5, 7
    spec = TcnnGridSpec(3, 2, 12, 3, 1.5)
    with torch.no_grad():
        for t in enc.tables:
            t.copy_(torch.randn(t.shape))
    flat = tables_to_tcnn_params(enc.tables, tcnn_row_sources(spec, enc.resolutions, [t.shape[0] for t in enc.tables]))
    assert flat.numel() == tcnn_n_params(spec)
    params = flat.reshape(-1, 2)
    lv0, lv1, lv2 = tcnn_layout(spec)
    for x, y, z in [(0, 0, 0), (2, 1, 0), (1, 2, 2), (2, 2, 2)]:  # level 0: tcnn's 3^3 grid inside our 4^3 one
        assert torch.equal(params[lv0.offset + x + 3 * y + 9 * z], enc.tables[0][x + 4 * y + 16 * z])
    assert torch.all(params[27:32] == 0)  # padding rows 27..31
    assert torch.equal(params[lv1.offset:lv1.offset + 125], enc.tables[1]) and torch.all(params[lv1.offset + 125:lv2.offset] == 0)
    assert torch.equal(params[lv2.offset:lv2.offset + 343], enc.tables[2])
    flat.sum().backward()
    g0 = enc.tables[0].grad[:, 0].reshape(4, 4, 4)  # [z, y, x]: ones where all coordinates < 3
    assert torch.all(g0[:3, :3, :3] == 1) and g0.sum() == 27 and torch.all(enc.tables[1].grad == 1)

    # our level hashed, tcnn's dense (4^3 = T = 64 <= T), then both hashed: the same table
    enc = HashEncoding(2, 1, 6, 4, 4.0, 0)  # ours: 5^3 > 64 and 17^3 > 64 -> both hashed
    spec = TcnnGridSpec(2, 1, 6, 4, 4.0)
    assert [(lv.resolution, lv.rows, lv.hashed) for lv in tcnn_layout(spec)] == [(4, 64, False), (16, 64, True)]
    sources = tcnn_row_sources(spec, enc.resolutions, [64, 64])
    assert sources[1] is None
    x, y, z = 3, 1, 2
    assert sources[0][x + 4 * y + 16 * z].item() == ((x * PRIMES[0]) ^ (y * PRIMES[1]) ^ (z * PRIMES[2])) % 64


def test_tcnn_formula_is_not_ours():
    """The documented difference, pinned: on the same (mapped) tables the two encodings disagree."""
    enc = HashEncoding(3, 2, 10, 4, 1.7, 0)
    spec = TcnnGridSpec(3, 2, 10, 4, 1.7)
    with torch.no_grad():
        for t in enc.tables:
            t.copy_(torch.randn(t.shape))
    flat = tables_to_tcnn_params(enc.tables, tcnn_row_sources(spec, enc.resolutions, [t.shape[0] for t in enc.tables]))
    pts = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    assert (tcnn_reference_encoding(pts, flat, spec) - enc.forward_torch(pts)).abs().max() > 0.1


@pytest.mark.skipif(not HAS_TCNN, reason="tinycudann is not installed")
def test_tinycudann_matches_its_reference_formula():
    if not CUDA:
        pytest.skip("CUDA is not available")
    geom = make(**THREESTUDIO, backend="tcnn").cuda()
    enc = geom.encoding
    spec = TcnnGridSpec(16, 2, 19, 16, 1.447269237440378)
    with torch.no_grad():
        for i, t in enumerate(enc.tables):
            t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).cuda())
        enc.level_mask[12:] = 0
    pts = torch.rand(5000, 3, generator=torch.Generator().manual_seed(0)).cuda()
    pts[:4] = torch.tensor([[0.0, 0, 0], [1, 1, 1], [1, 0, 0.5], [0.5, 1, 0]], device="cuda")
    grad_out = torch.randn(pts.shape[0], enc.output_dim, generator=torch.Generator().manual_seed(1)).cuda()

    out = enc(pts)
    out.backward(grad_out)
    got = [t.grad.clone() for t in enc.tables]
    for t in enc.tables:
        t.grad = None
    sources = tcnn_row_sources(spec, enc.resolutions, [t.shape[0] for t in enc.tables])
    ref = tcnn_reference_encoding(pts, tables_to_tcnn_params(enc.tables, sources), spec) * enc.level_mask.repeat_interleave(2)
    ref.backward(grad_out)
    # float32 CUDA exp2f / fma vs numpy: positions agree to ~1e-3 cells at the finest levels
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    for g, t in zip(got, enc.tables):
        torch.testing.assert_close(g, t.grad, rtol=1e-3, atol=1e-2 * max(1.0, t.grad.abs().max().item()))
    assert list(geom.state_dict()) == list(make(**THREESTUDIO, backend="torch").state_dict())
