"""Benchmark the hash-grid encoder backends on a CUDA GPU: torch vs triton (vs tcnn if importable).

    python tools/bench_hash_grid.py --json outputs/bench_hash_grid.json

Two sizes: the shapes preset (apps/shapes_world/configs/preset/shapes_prolificdreamer.yaml: 8 levels, F = 2,
T = 2^16, N_min = 16, b = 1.447, 770k points per step) and threestudio's defaults (16 levels,
T = 2^19, 1M points). For each: the encoding alone (forward, and forward + backward into the
tables) and the whole hash-grid geometry (encoding + heads, density and features, forward +
backward), timed with CUDA events: --warmup calls, then the median of --iters. Also the max
abs differences of outputs and table gradients: triton against torch (the same encoding:
expect ~1e-6), and tcnn against tcnn_reference_encoding (tcnn's own formula; tcnn against
torch is not reported because the formulas differ, see framework/library/hash_encoding_tcnn.py).
Tables are filled with N(0, 1) values so that the differences are not hidden by the 1e-4 init.
Runs in well under a minute on an H100.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scorelift.builders import build_named  # noqa: E402
from scorelift.plugins.geometry.hash_grid import HashEncoding, _import_error  # noqa: E402

SCALE = 1.447269237440378
PRESETS = {
    "shapes": dict(n_levels=8, features_per_level=2, log2_hashmap_size=16, base_resolution=16, per_level_scale=SCALE,
                   bbox_radius=0.6, n_points=770_000),
    "threestudio": dict(n_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16,
                        per_level_scale=SCALE, bbox_radius=1.0, n_points=1_000_000),
}


def cuda_time(step, warmup: int, iters: int) -> float:
    """Median milliseconds of ``step()`` over ``iters`` calls after ``warmup`` calls (CUDA events)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return (a.float() - b.float()).abs().max().item()


def encoders(enc: HashEncoding, backends: list[str]):
    """backend -> function(points) -> [N, L * F], all on ``enc``'s tables."""
    fns = {"torch": enc.forward_torch}
    if "triton" in backends:
        from scorelift.library.hash_encoding_triton import triton_hash_encoding

        fns["triton"] = lambda p: triton_hash_encoding(p, enc.tables, enc.resolutions, enc.level_mask)
    if "tcnn" in backends:
        adapter = enc.tcnn_adapter(torch.device("cuda"))
        fns["tcnn"] = lambda p: adapter(p, list(enc.tables), enc.level_mask)
    return fns


def bench_encoding(cfg: dict, backends: list[str], warmup: int, iters: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    enc = HashEncoding(cfg["n_levels"], cfg["features_per_level"], cfg["log2_hashmap_size"], cfg["base_resolution"],
                       cfg["per_level_scale"], seed=0)
    with torch.no_grad():
        for t in enc.tables:
            t.copy_(torch.randn(t.shape, generator=gen))
    enc = enc.cuda()
    pts = torch.rand(cfg["n_points"], 3, generator=gen)
    pts[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0]])
    pts = pts.cuda()
    grad_out = torch.randn(pts.shape[0], enc.output_dim, generator=gen).cuda()
    fns = encoders(enc, backends)

    def run(fn):
        for t in enc.tables:
            t.grad = None
        out = fn(pts)
        out.backward(grad_out)
        return out.detach(), [t.grad.clone() for t in enc.tables]

    result: dict = {"timings_ms": {}, "max_abs_diff": {}}
    outputs = {}
    for name, fn in fns.items():
        outputs[name] = run(fn)

        def fwd(fn=fn):
            with torch.no_grad():
                fn(pts)

        result["timings_ms"][name] = {
            "forward": cuda_time(fwd, warmup, iters),
            "forward_backward": cuda_time(lambda fn=fn: run(fn), warmup, iters),
        }
    if "triton" in outputs:
        result["max_abs_diff"]["triton_vs_torch"] = {
            "output": max_diff(outputs["triton"][0], outputs["torch"][0]),
            "table_grads": max_diff(outputs["triton"][1], outputs["torch"][1]),
            "output_scale": outputs["torch"][0].abs().max().item(),
        }
    if "tcnn" in outputs:
        from scorelift.library.hash_encoding_tcnn import tables_to_tcnn_params, tcnn_reference_encoding

        adapter = enc.tcnn_adapter(torch.device("cuda"))
        reference = lambda p: tcnn_reference_encoding(  # noqa: E731
            p, tables_to_tcnn_params(list(enc.tables), adapter.sources), adapter.spec
        ) * enc.level_mask.repeat_interleave(enc.features_per_level)
        ref = run(reference)
        result["max_abs_diff"]["tcnn_vs_tcnn_reference"] = {
            "output": max_diff(outputs["tcnn"][0], ref[0]),
            "table_grads": max_diff(outputs["tcnn"][1], ref[1]),
            "output_scale": ref[0].abs().max().item(),
        }
    return result


def bench_geometry(cfg: dict, backends: list[str], warmup: int, iters: int) -> dict:
    over = {k: cfg[k] for k in ("n_levels", "features_per_level", "log2_hashmap_size", "base_resolution",
                                "per_level_scale", "bbox_radius")}
    gen = torch.Generator().manual_seed(1)
    r = cfg["bbox_radius"]
    pts = (torch.rand(cfg["n_points"], 3, generator=gen) * 2.2 * r - 1.1 * r).cuda()
    state = None
    result: dict = {"timings_ms": {}, "max_abs_diff": {}}
    outs = {}
    for name in backends:
        geom = build_named("geometry", "hash-grid", {**over, "backend": name}).cuda()
        if state is None:
            with torch.no_grad():
                for t in geom.encoding.tables:
                    t.copy_(torch.randn(t.shape, generator=gen).cuda())
            state = geom.state_dict()
        geom.load_state_dict(state)

        def step(geom=geom):
            geom.zero_grad(set_to_none=True)
            out = geom(pts)
            (out.density.sum() + out.features.sum()).backward()
            return out

        out = step()
        outs[name] = (out.density.detach(), out.features.detach(), [t.grad.clone() for t in geom.encoding.tables])
        result["timings_ms"][name] = {"forward_backward": cuda_time(step, warmup, iters)}
        del geom
    if "triton" in outs:
        result["max_abs_diff"]["triton_vs_torch"] = {
            "density": max_diff(outs["triton"][0], outs["torch"][0]),
            "features": max_diff(outs["triton"][1], outs["torch"][1]),
            "table_grads": max_diff(outs["triton"][2], outs["torch"][2]),
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_hash_grid needs a CUDA GPU (torch.cuda.is_available() is False).", file=sys.stderr)
        return 2

    backends = ["torch"]
    skipped = {}
    for name, module in (("triton", "triton"), ("tcnn", "tinycudann")):
        err = _import_error(module)
        if err is None:
            backends.append(name)
        else:
            skipped[name] = err
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__ if "triton" in backends else None,
        "backends": backends,
        "skipped_backends": skipped,
        "warmup": args.warmup,
        "iters": args.iters,
        "presets": {},
    }
    print(f"{info['device']}  torch {info['torch']}  triton {info['triton']}  backends {backends}")
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")

    rows = []
    for preset in args.presets:
        cfg = PRESETS[preset]
        res = {
            "config": cfg,
            "encoding": bench_encoding(cfg, backends, args.warmup, args.iters),
            "geometry": bench_geometry(cfg, backends, args.warmup, args.iters),
        }
        info["presets"][preset] = res
        for part in ("encoding", "geometry"):
            t = res[part]["timings_ms"]
            base = t["torch"]["forward_backward"]
            for b in backends:
                rows.append((preset, part, b, t[b].get("forward"), t[b]["forward_backward"], base / t[b]["forward_backward"]))
        torch.cuda.empty_cache()

    print(f"\n{'preset':<12} {'part':<9} {'backend':<7} {'fwd ms':>8} {'fwd+bwd ms':>11} {'x torch':>8}")
    for preset, part, b, fwd, fb, speed in rows:
        fwd_s = f"{fwd:8.3f}" if fwd is not None else f"{'-':>8}"
        print(f"{preset:<12} {part:<9} {b:<7} {fwd_s} {fb:11.3f} {speed:8.2f}")
    print("\nmax abs differences")
    for preset, res in info["presets"].items():
        for part in ("encoding", "geometry"):
            for pair, d in res[part]["max_abs_diff"].items():
                print(f"  {preset:<12} {part:<9} {pair:<24} " + "  ".join(f"{k} {v:.3g}" for k, v in d.items()))
    if "tcnn" in backends:
        print("  (tcnn is compared with its own formula; it is a different function from torch/triton)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
