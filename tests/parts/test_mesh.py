"""The mesh stage's pieces with hand-computed numbers: the tetrahedral grid, marching tetrahedra on
an analytic sphere, a single triangle's coverage, its depth test and its silhouette gradients, and
the DMTet geometry drawn by the rasteriser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorelift.data.cameras import make_cameras
from scorelift.maths.rasterize import antialias, barycentrics, project, rasterize
from scorelift.maths.tetrahedra import marching_tets, tet_grid
from scorelift.builders import build_named
from scorelift.interfaces.geometry import Geometry, GeometryOutput


def tet_volumes(vertices: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    p = vertices[tets]
    return torch.linalg.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], dim=1)) / 6.0


def test_the_tetrahedral_grid_fills_the_cube_without_gaps_or_overlaps():
    vertices, tets = tet_grid(3, radius=1.5)
    assert vertices.shape == (64, 3) and tets.shape == (6 * 27, 4)
    volume = tet_volumes(vertices, tets).abs()
    assert torch.allclose(volume, torch.full_like(volume, 1.0 ** 3 / 6))  # cell side 1: six tets of 1/6
    assert volume.sum().item() == pytest.approx(3.0 ** 3)
    # conforming: every triangle of the grid is shared by two tets, or lies on the cube's surface
    tri = torch.sort(tets[:, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]].reshape(-1, 3), dim=1).values
    _, counts = torch.unique(tri, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    on_surface = (vertices[torch.unique(tri, dim=0)[counts == 1]].abs() == 1.5).all(dim=1).any(dim=1)
    assert on_surface.all()  # each unshared triangle has its three vertices on one face of the cube


def sphere_mesh(resolution: int = 32, radius: float = 0.6):
    vertices, tets = tet_grid(resolution, 1.0)
    return marching_tets(vertices, tets, vertices.norm(dim=-1) - radius)


def test_marching_tets_on_a_sphere_gives_its_area_and_volume_and_a_closed_outward_surface():
    verts, faces = sphere_mesh()
    p = verts[faces]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
    area = 0.5 * cross.norm(dim=-1).sum().item()
    assert area == pytest.approx(4 * math.pi * 0.36, rel=0.02)
    volume = (p[:, 0] * cross).sum().item() / 6  # divergence theorem: positive when normals point out
    assert volume == pytest.approx(4 / 3 * math.pi * 0.6 ** 3, rel=0.03)
    edges = torch.sort(faces[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), dim=1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    assert (counts == 2).all()  # watertight: every edge between exactly two triangles
    assert (verts.norm(dim=-1) - 0.6).abs().max() < 0.02  # vertices on the sphere (linear crossing)


def test_a_surface_vertex_moves_with_the_signed_distances_as_the_crossing_formula_says():
    vertices = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0], [0.0, 0, 1]])
    tets = torch.tensor([[0, 1, 2, 3]])
    sdf = torch.tensor([-0.3, 0.5, 0.2, 0.4], requires_grad=True)
    verts, faces = marching_tets(vertices, tets, sdf)
    assert faces.shape == (1, 3)
    on_x = verts[(verts[:, 1] == 0) & (verts[:, 2] == 0)]  # on edge 0-1: x = s0 / (s0 - s1) = 0.375
    assert on_x[0, 0].item() == pytest.approx(0.3 / 0.8)
    (grad,) = torch.autograd.grad(on_x[0, 0], sdf)
    # d/ds0 of s0 / (s0 - s1) = -s1 / (s0 - s1)^2; d/ds1 = s0 / (s0 - s1)^2
    assert grad.tolist() == pytest.approx([-0.5 / 0.64, -0.3 / 0.64, 0.0, 0.0])
    p = verts[faces[0]]
    normal = torch.linalg.cross(p[1] - p[0], p[2] - p[0])
    assert (normal * torch.tensor([1.0, 1, 1])).sum() > 0  # points away from the inside vertex 0


def test_a_single_triangles_coverage_is_the_pixels_whose_centres_it_holds():
    xy = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])  # x + y <= 4: centres with i + j <= 3
    z = torch.ones(1, 3)
    faces = torch.tensor([[0, 1, 2]])
    covered = rasterize(xy, z, faces, 4, 4)[0] >= 0
    assert covered.int().tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    flipped = rasterize(xy[:, [0, 2, 1]], z, faces, 4, 4)[0] >= 0  # either winding is drawn
    assert torch.equal(flipped, covered)
    # a small max_pairs cuts the candidates into chunks without changing the result
    assert torch.equal(rasterize(xy, z, faces, 4, 4, max_pairs=3)[0] >= 0, covered)


def test_the_nearer_triangle_wins_the_depth_test_and_barycentrics_are_perspective_correct():
    xy = torch.tensor([[[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [0.0, 0.0], [8.0, 0.0], [0.0, 8.0]]])
    z = torch.tensor([[2.0, 2.0, 2.0, 1.0, 3.0, 1.0]])  # the second triangle tilts through the first
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    ids = rasterize(xy, z, faces, 8, 8)[0]
    (b, i, j), f, bary, depth = barycentrics(xy, z, faces, ids[None])
    # the second triangle's depth at screen barycentrics (w0, w1, w2): 1 / (w0 / 1 + w1 / 3 + w2 / 1)
    w1 = (j.double() + 0.5) / 8  # the screen barycentric of vertex 4, (8, 0): x / 8
    tilted = 1.0 / ((1 - w1) / 1.0 + w1 / 3.0)
    assert torch.equal(f, torch.where(tilted < 2.0, 1, 0))
    assert torch.allclose(depth.double(), torch.minimum(tilted, torch.full_like(tilted, 2.0)), atol=1e-5)
    assert torch.allclose(bary.sum(-1), torch.ones(len(f)))


@pytest.mark.parametrize("edge_x", [3.3, 2.8])
def test_a_silhouette_edge_passes_its_position_to_the_opacity_of_the_pixels_it_crosses(edge_x):
    """A triangle whose right edge is the vertical x = e from (e, -10) to (e, 30), seen in a 4 x 6
    image: at row y the edge crossing between the centres j + 0.5 and j + 1.5 around it is at
    s = e - (j + 0.5); the pixel beyond gains s - 1/2 of the opacity (s > 1/2), the pixel before
    loses 1/2 - s (s < 1/2), so d(opacity)/d(edge position) is 1 per row. The edge's position at
    row y is x1 + (y + 10) / 40 (x2 - x1), so d/dx1 = 1 - (y + 10) / 40 and d/dx2 = (y + 10) / 40."""
    H, W = 4, 6
    xy = torch.tensor([[[-50.0, -10.0], [edge_x, -10.0], [edge_x, 30.0]]], requires_grad=True)
    z = torch.ones(1, 3)
    faces = torch.tensor([[0, 1, 2]])
    ids = rasterize(xy.detach(), z, faces, H, W)
    covered = (ids >= 0).float()[..., None]
    edges = [torch.tensor([[0, 1], [1, 2], [2, 0]])]  # a lone triangle's edges are all on its silhouette
    color, opacity = antialias(covered.clone(), covered.clone(), torch.ones(1, H, W), ids, xy, edges)
    s = edge_x - (math.floor(edge_x - 0.5) + 0.5)
    last_inside = math.floor(edge_x - 0.5)
    expected = covered[0, :, :, 0].clone()
    if s > 0.5:
        expected[:, last_inside + 1] = s - 0.5
    else:
        expected[:, last_inside] = 0.5 + s
    assert torch.allclose(opacity[0, :, :, 0], expected, atol=1e-6)
    assert torch.equal(color, opacity)
    opacity.sum().backward()
    rows = torch.arange(H, dtype=torch.float32) + 0.5
    assert xy.grad[0, 1, 0].item() == pytest.approx((1 - (rows + 10) / 40).sum().item(), abs=1e-5)
    assert xy.grad[0, 2, 0].item() == pytest.approx(((rows + 10) / 40).sum().item(), abs=1e-5)
    assert xy.grad[0, 0].abs().max().item() < 1e-6  # the far vertex moves no edge inside the image


def test_projection_puts_a_point_where_the_cameras_ray_through_that_pixel_goes():
    cams = make_cameras(20.0, torch.tensor([30.0, 200.0]), 3.0, 40.0, 16)
    origins, dirs = cams.rays()
    point = origins[:, 5, 11] + 2.5 * dirs[:, 5, 11]  # [2, 3] on the rays through pixel (5, 11)
    for k in range(2):
        xy, z = project(point[k:k + 1], cams.c2w[k:k + 1], cams.fovy[k:k + 1], 16, 16)
        assert xy[0, 0].tolist() == pytest.approx([11.5, 5.5], abs=1e-4)
        assert z[0, 0].item() > 0


def test_the_rasteriser_draws_the_dmtet_sphere_with_its_silhouette_and_passes_gradients():
    geometry = build_named("geometry", "dmtet", {"resolution": 24, "init_radius": 0.6, "feature_resolution": 8})
    renderer = build_named("renderer", "rasterizer")
    background = build_named("background", "solid", {"color": [0.0, 0.0, 1.0]})
    size, distance, fovy = 48, 3.0, 40.0
    cams = make_cameras(10.0, torch.tensor([0.0, 90.0]), distance, fovy, size)
    out = renderer.render(geometry, background, cams)
    assert out.weights is None and set(out.extras) == {"mesh"}
    # the sphere's silhouette: a disc of radius focal * tan(asin(r / d)) pixels around the centre
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    radius_px = focal * math.tan(math.asin(0.6 / distance))
    centre = torch.arange(size) + 0.5 - size / 2
    disc = (centre[:, None] ** 2 + centre[None, :] ** 2) <= radius_px ** 2
    mask = out.opacity[..., 0] > 0.5
    iou = (mask & disc).sum().item() / (mask | disc).sum().item()
    assert iou > 0.95
    empty = out.opacity[0, ..., 0] == 0
    assert empty.sum() > size * size / 2
    assert torch.equal(out.color[0][empty], torch.tensor([0.0, 0.0, 1.0]).expand(int(empty.sum()), 3))
    # antialiased, the coverage adds up to the disc's area (hard coverage alone is off by the
    # pixels the outline cuts: here 5 %)
    assert out.opacity[0].sum().item() == pytest.approx(math.pi * radius_px ** 2, rel=0.01)
    inside = out.opacity[0, ..., 0] == 1
    assert torch.allclose(out.color[0][inside], torch.full((int(inside.sum()), 3), 0.5), atol=1e-6)  # grey start
    assert out.depth[0][inside].min().item() == pytest.approx(distance - 0.6, abs=0.01)
    # a loss on the render reaches the signed distances, the offsets and the features
    (out.opacity.sum() + out.color[..., 0].sum()).backward()
    for name in ("sdf", "deform", "feature_grid"):
        assert getattr(geometry, name).grad.abs().sum() > 0, name


def hinge(h: float) -> dict:
    """Two triangles on the edge (1, 0, 0)-(0, 1, 0): one in the plane z = 0 (normal +z), one
    rising to (1, 1, h) (normal (-h, -h, 1) / sqrt(1 + 2 h^2)), wound consistently."""
    vertices = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0], [1.0, 1, h]], requires_grad=True)
    return {"vertices": vertices, "faces": torch.tensor([[0, 1, 2], [1, 3, 2]])}


def mesh_render(mesh: dict):
    from scorelift.interfaces import RenderOutput

    zero = torch.zeros(1, 2, 2, 1)
    return RenderOutput(color=zero.expand(1, 2, 2, 3), opacity=zero, depth=zero, extras={"mesh": mesh})


def test_normal_consistency_of_a_hinge_is_one_minus_the_cosine_of_its_angle():
    loss = build_named("loss", "normal-consistency")
    assert loss.reads == ("mesh",)
    assert loss(mesh_render(hinge(0.0)), None).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(mesh_render(hinge(1.0)), None).item() == pytest.approx(1 - 1 / math.sqrt(3))
    empty = {"vertices": torch.zeros(0, 3, requires_grad=True), "faces": torch.zeros(0, 3, dtype=torch.long)}
    assert loss(mesh_render(empty), None).item() == 0.0


def test_laplacian_smoothness_of_a_hinge_is_the_hand_computed_mean():
    """h = 1: vertex 0's neighbours average (0.5, 0.5, 0): 0.5; vertex 3's (0.5, 0.5, 0) from
    (1, 1, 1): 0.5 + 1; vertices 1 and 2 each (1/3)(1, 2, 1) or (2, 1, 1) away: 8/9 + 1/9.
    Mean (0.5 + 1.5 + 1 + 1) / 4 = 1."""
    loss = build_named("loss", "laplacian-smoothness")
    mesh = hinge(1.0)
    value = loss(mesh_render(mesh), None)
    assert value.item() == pytest.approx(1.0)
    value.backward()
    # d/d v3 of (1/4) ||v3 - (v1 + v2) / 2||^2 (+ the terms of v1 and v2, which hold v3 / 3): hand-derived
    v = mesh["vertices"].detach()
    lap = {0: v[0] - (v[1] + v[2]) / 2, 1: v[1] - (v[0] + v[2] + v[3]) / 3,
           2: v[2] - (v[0] + v[1] + v[3]) / 3, 3: v[3] - (v[1] + v[2]) / 2}
    grad3 = (2 * lap[3] - 2 * lap[1] / 3 - 2 * lap[2] / 3) / 4
    assert torch.allclose(mesh["vertices"].grad[3], grad3, atol=1e-6)


def test_the_exported_surface_of_the_dmtet_sphere_is_closed_and_has_its_diameter():
    import trimesh
    from types import SimpleNamespace

    from scorelift.outputs.mesh import MeshExportConfig, surface_mesh

    geometry = build_named("geometry", "dmtet", {"resolution": 32, "init_radius": 0.5, "feature_resolution": 8})
    system = SimpleNamespace(geometry=geometry, prior=None)
    mesh, level = surface_mesh(system, MeshExportConfig(resolution=64, threshold="auto", keep_largest=True,
                                                      formats=["glb"]))
    assert level is None and isinstance(mesh, trimesh.Trimesh)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert extent == pytest.approx([1.0, 1.0, 1.0], rel=0.01)
    assert (mesh.visual.vertex_colors[:, :3] == 128).all()  # mid-grey features, sigmoid(0)


def test_a_coarser_dmtet_extraction_keeps_the_sphere_and_fits_the_face_cap():
    """mesh(resolution=own) is mesh(); at 16 cells per axis the analytic sphere's surface has about
    a quarter of the faces, its area still within 3 % of 4 pi r^2. The export, capped below the
    own grid's face count, extracts on the coarsest grid it needs and stays closed and in one piece."""
    import trimesh
    from types import SimpleNamespace

    from scorelift.outputs.mesh import MeshExportConfig, surface_mesh

    geometry = build_named("geometry", "dmtet", {"resolution": 32, "init_radius": 0.47, "feature_resolution": 8})
    # (0.47: no grid vertex lies on the sphere, where a zero signed distance gives degenerate triangles)
    with torch.no_grad():
        geometry.deform.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))  # offsets carry over too
        own_v, own_f = geometry.mesh()
        same_v, same_f = geometry.mesh(resolution=32)
        assert torch.equal(own_v, same_v) and torch.equal(own_f, same_f)
        geometry.deform.zero_()
        own_v, own_f = geometry.mesh()
        v, f = geometry.mesh(resolution=16)
    ratio = len(f) / len(own_f)
    assert 0.15 < ratio < 0.35, ratio
    coarse = trimesh.Trimesh(v.numpy(), f.numpy())
    assert coarse.is_watertight
    assert coarse.area == pytest.approx(4 * math.pi * 0.47**2, rel=0.03)

    system = SimpleNamespace(geometry=geometry, prior=None)
    cap = len(own_f) // 2
    mesh, _ = surface_mesh(system, MeshExportConfig(resolution=64, threshold="auto", keep_largest=True,
                                                    formats=["glb"], max_faces=cap))
    assert cap // 2 < len(mesh.faces) <= cap
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert mesh.bounds[1] - mesh.bounds[0] == pytest.approx([0.94, 0.94, 0.94], rel=0.02)


def two_blocks_with_a_crack(resolution: int = 16):
    """A DMTet over [-1, 1]^3 (cells of 0.125) holding two boxes, x in [-0.6, -0.02] and
    [0.02, 0.6] (y, z in [-0.47, 0.47]; no grid vertex on a face): the crack between them holds the
    plane of grid vertices x = 0, which lie outside (signed distance 0.02), so their surfaces are
    two closed pieces."""
    geometry = build_named("geometry", "dmtet", {"resolution": resolution, "bbox_radius": 1.0, "feature_resolution": 4})
    p = geometry.grid_vertices

    def box(lo, hi):  # the exact signed distance of an axis-aligned box, [V]
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        q = (p - centre).abs() - half
        return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)

    a = box(torch.tensor([-0.6, -0.47, -0.47]), torch.tensor([-0.02, 0.47, 0.47]))
    b = box(torch.tensor([0.02, -0.47, -0.47]), torch.tensor([0.6, 0.47, 0.47]))
    with torch.no_grad():
        geometry.sdf.copy_(torch.minimum(a, b))
    return geometry


def test_closing_joins_pieces_across_a_one_cell_crack_and_leaves_a_convex_surface_alone():
    """The closing grows the inside by one grid edge and the outside back by one: the crack's vertex
    plane turns inside where both boxes face it (x = 0, the 7 x 7 vertices at y, z in [-0.375,
    0.375]) and the two boxes become one closed piece with their joint bounds; nothing else
    changes: the sphere's surface is the same with and without it."""
    import trimesh

    from scorelift.maths.tetrahedra import close_inside

    geometry = two_blocks_with_a_crack()
    with torch.no_grad():
        sdf = geometry.sdf.clone()
        closed_sdf = close_inside(sdf, geometry.tets, 1)
        changed = closed_sdf != sdf
        crack_plane = (geometry.grid_vertices[:, 0].abs() < 1e-6) & (geometry.grid_vertices[:, 1:].abs() < 0.47).all(-1)
        assert torch.equal(changed, crack_plane) and int(changed.sum()) == 49
        assert (closed_sdf[changed] == -1e-3).all()
        assert torch.equal(close_inside(sdf, geometry.tets, 0), sdf)

        pieces = trimesh.Trimesh(*(t.numpy() for t in geometry.mesh())).split(only_watertight=False)
        joined = trimesh.Trimesh(*(t.numpy() for t in geometry.mesh(closing=1)))
    assert len(pieces) == 2
    assert len(joined.split(only_watertight=False)) == 1 and joined.is_watertight
    np.testing.assert_allclose(joined.bounds, [[-0.6, -0.47, -0.47], [0.6, 0.47, 0.47]], atol=1e-5)

    sphere = build_named("geometry", "dmtet", {"resolution": 32, "init_radius": 0.47, "feature_resolution": 8})
    with torch.no_grad():
        plain, closed_by_one = sphere.mesh(), sphere.mesh(closing=1)
    assert all(torch.equal(x, y) for x, y in zip(plain, closed_by_one))


def test_the_export_closes_the_crack_and_keeps_both_blocks_unless_told_not_to():
    """export.closing=1 (the default): one piece spanning both boxes; closing=0 with keep_largest
    keeps one box only; a coarser extraction for the face cap is closed the same way."""
    from types import SimpleNamespace

    from scorelift.outputs.mesh import MeshExportConfig, surface_mesh

    system = SimpleNamespace(geometry=two_blocks_with_a_crack(), prior=None)

    def export(**over):
        cfg = MeshExportConfig(**{**dict(resolution=64, threshold="auto", keep_largest=True, formats=["glb"]), **over})
        return surface_mesh(system, cfg)[0]

    joined, as_trained = export(closing=1), export(closing=0)
    np.testing.assert_allclose(joined.bounds, [[-0.6, -0.47, -0.47], [0.6, 0.47, 0.47]], atol=1e-5)
    assert joined.is_watertight and len(joined.split(only_watertight=False)) == 1
    assert as_trained.bounds[1][0] - as_trained.bounds[0][0] == pytest.approx(0.58, abs=1e-5)  # one box
    capped = export(closing=1, max_faces=len(joined.faces) - 1)
    assert len(capped.faces) < len(joined.faces) and len(capped.split(only_watertight=False)) == 1
    assert capped.bounds[1][0] - capped.bounds[0][0] > 1.0  # still both boxes, on the coarser grid


class SkinnedHalfSpace(Geometry):
    """Density 20 below z = 0 and none above; RGB features: a skin of colour A for z in (-0.05, 0],
    colour B deeper, grey above."""

    A, B = torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.8])

    def __init__(self):
        super().__init__()
        self.n_features, self.feature_kind = 3, "rgb"
        self.register_buffer("bbox", torch.tensor([[-1.0] * 3, [1.0] * 3]))

    def forward(self, points):
        z = points[:, 2:]
        density = torch.where(z[:, 0] < 0, 20.0, 0.0).to(points)
        features = torch.where(z > -0.05, self.A, self.B).to(points)
        features = torch.where(z > 0, torch.full_like(features, 0.5), features)
        return GeometryOutput(density=density, features=features)


def test_rendered_features_composite_the_field_along_the_outward_normal():
    """At a point on the surface z = 0 the normal is +z; the segment from z = 0.2 down to -0.2 in 32
    steps of 0.0125 has 16 samples inside, the first 4 (z > -0.05) in the skin: with alpha =
    1 - exp(-20 * 0.0125) each, the skin weighs 1 - (1 - alpha)^4, the rest (1 - alpha)^4 -
    (1 - alpha)^16, divided by the opacity 1 - (1 - alpha)^16. Far from the surface (flat field, no
    normal) the point keeps its own features."""
    from scorelift.plugins.geometry.dmtet import rendered_features

    field = SkinnedHalfSpace()
    points = torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.0, 0.6]])
    got = rendered_features(field, points, depth=0.2, h=0.01)
    q = math.exp(-20 * 0.0125)  # 1 - alpha
    skin, deep = 1 - q**4, q**4 - q**16
    expected = (skin * SkinnedHalfSpace.A + deep * SkinnedHalfSpace.B) / (1 - q**16)
    assert torch.allclose(got[0], expected, atol=1e-5)
    assert torch.equal(got[1], torch.full((3,), 0.5))


def test_the_feature_grid_gets_its_own_rate_only_when_asked():
    """lr_features=1 (the default) keeps one optimizer group (the checkpoints of earlier runs still
    resume); another value puts the feature grid in its own group at that factor."""
    from scorelift.errors import ConfigError
    from scorelift.systems.optim import OptimizerConfig, build_optimizer

    cfg = OptimizerConfig(name="adam", args={}, lr={"geometry": 0.01})
    plain = build_named("geometry", "dmtet", {"resolution": 4, "feature_resolution": 4})
    optimizer = build_optimizer(cfg, {"geometry": plain.optimizer_groups() or plain.parameters()})
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [("geometry", 0.01, 3)]
    split = build_named("geometry", "dmtet", {"resolution": 4, "feature_resolution": 4, "lr_features": 0.2})
    optimizer = build_optimizer(cfg, {"geometry": split.optimizer_groups()})
    assert [(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        ("geometry.surface", 0.01, 2), ("geometry.features", pytest.approx(0.002), 1)]
    with pytest.raises(ConfigError, match="lr_features=-1"):
        build_named("geometry", "dmtet", {"lr_features": -1.0})


@pytest.mark.parametrize("over, words", [
    ({"feature_init": "mean"}, ["feature_init='mean'", "field, rendered"]),
    ({"init_depth": 0.0}, ["init_depth=0.0", "positive"]),
])
def test_bad_feature_start_options_are_refused(over, words):
    from scorelift.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_named("geometry", "dmtet", over)
    assert all(w in str(err.value) for w in words)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_rasteriser_on_cuda_matches_the_cpu():
    """The same pure-PyTorch code on the GPU: images equal to float rounding, gradients close."""
    results = {}
    for device in ("cpu", "cuda"):
        geometry = build_named("geometry", "dmtet", {"resolution": 24, "init_radius": 0.6, "feature_resolution": 8,
                                                     "feature_init_std": 1.0}).to(device)
        renderer = build_named("renderer", "rasterizer").to(device)
        background = build_named("background", "solid", {"color": [0.0, 0.0, 1.0]}).to(device)
        cams = make_cameras(10.0, torch.tensor([0.0, 90.0]), 3.0, 40.0, 64).to(device)
        out = renderer.render(geometry, background, cams)
        (out.color.square().sum() + out.opacity.sum()).backward()
        results[device] = (out.color.cpu(), out.opacity.cpu(), geometry.sdf.grad.cpu(), geometry.feature_grid.grad.cpu())
    for a, b in zip(results["cpu"], results["cuda"]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), (a - b).abs().max()
