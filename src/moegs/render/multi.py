"""Several experts' Gaussians rendered in one rasterizer pass, one image per expert.

``rasterize_experts`` takes the Gaussians of ``K`` experts concatenated, with the expert of
each Gaussian, and does one projection, one tile binning (one depth sort) and one compositing
pass in which every pixel keeps ``K`` transmittances and ``K`` sets of accumulators: a Gaussian
only updates its own expert's. The result is, by construction, what ``K`` separate
:func:`~moegs.render.rasterize` calls give. The work is split in two steps so that callers
whose Gaussians do not change (a mixture with frozen experts) can keep the first:

- :func:`prepare_experts`: projection, colour and tile bins (:class:`PreparedExperts`);
- :func:`composite_experts`: the per-expert compositing of colour, depth and extra channels.

With the geometry fixed, the extra channels are a linear function of the per-Gaussian values:
:func:`splat_weights` returns that map as a sparse matrix (:class:`SplatWeights`, cpu backend), so
splatting new values (a router's gates, each training step) costs a sparse product instead of a
compositing pass.

The ``cuda`` backend renders the experts one after another through gsplat behind the same
functions, so callers never branch on the device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..cameras import Camera
from . import Backend, Colors, background_or_none, blend_background, eval_colors, expected_depth, resolve_backend
from ._torch_impl import composite_torch
from .projection import TileBins, bin_gaussians, project_and_color

__all__ = ["ExpertsRenderOutput", "PreparedExperts", "SplatWeights", "prepare_experts", "composite_experts",
           "rasterize_experts", "splat_weights"]


@dataclass
class ExpertsRenderOutput:
    """What ``rasterize_experts`` returns (``K`` experts).

    Attributes:
        color: ``[K, H, W, 3]`` each expert's colour over the background.
        alpha: ``[K, H, W]`` each expert's accumulated opacity.
        depth_acc: ``[K, H, W]`` each expert's alpha-weighted depth; :attr:`depth` is the expected depth
            (0 where empty) made from it when asked for.
        extras: ``[K, H, W, C]`` extra channels, composited with each expert's colour weights.
        meta: ``means2d`` ``[N, 2]`` (the concatenated Gaussians'; ``.grad`` after backward),
            ``radii`` ``[N]``, ``depths`` ``[N]``, ``expert_ids`` ``[N]``, ``num_experts``,
            ``width``, ``height``, ``backend``; with the cuda backend ``means2d`` is a list of
            gsplat's ``[1, N_k, 2]`` tensors, one per expert.
    """

    color: Tensor
    alpha: Tensor
    depth_acc: Tensor
    extras: Tensor
    meta: dict = field(default_factory=dict)

    @property
    def depth(self) -> Tensor:
        """``[K, H, W]`` each expert's expected depth."""
        return expected_depth(self.depth_acc, self.alpha)


@dataclass
class PreparedExperts:
    """Everything of a multi-expert render that the extra channels do not change.

    Attributes:
        camera: the camera it was prepared for.
        expert_ids: ``[N]`` int64 expert of each Gaussian; num_experts: ``K``.
        backend: the concrete backend.
        opacities: ``[N]`` opacities after the sigmoid.
        rgb: ``[N, 3]`` colour evaluated for the camera.
        means2d, conics, depths, radii: projection (``Projected``); bins: the tile lists
            (``None`` for the cuda backend, which projects inside gsplat).
        gaussians: ``(means, quats, log_scales)`` kept for the cuda backend.
    """

    camera: Camera
    expert_ids: Tensor
    num_experts: int
    backend: str
    opacities: Tensor
    rgb: Tensor
    means2d: Tensor | None = None
    conics: Tensor | None = None
    depths: Tensor | None = None
    radii: Tensor | None = None
    bins: TileBins | None = None
    gaussians: tuple[Tensor, Tensor, Tensor] | None = None

    def nbytes(self) -> int:
        """Bytes held by its tensors (for cache budgets)."""
        ts = [self.expert_ids, self.opacities, self.rgb, self.means2d, self.conics, self.depths, self.radii]
        if self.bins is not None:
            ts += [self.bins.offsets, self.bins.flatten_ids, self.bins.tile_ids]
        ts += list(self.gaussians or ())
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def detach(self) -> "PreparedExperts":
        """A copy cut from the autograd graph (what a cache of frozen experts keeps)."""
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return PreparedExperts(self.camera, self.expert_ids, self.num_experts, self.backend, d(self.opacities),
                               d(self.rgb), d(self.means2d), d(self.conics), d(self.depths), self.radii, self.bins,
                               None if self.gaussians is None else tuple(t.detach() for t in self.gaussians))


def prepare_experts(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    log_scales: Tensor,  # [N, 3]
    opacity_logits: Tensor,  # [N]
    colors: Colors,  # [N, 3], [N, B, 3] SH coefficients, or those in two parts
    expert_ids: Tensor,  # [N] int
    num_experts: int,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    backend: Backend = "auto",
) -> PreparedExperts:
    """Projection, colour and tile bins of ``K`` experts' concatenated Gaussians (arguments as for
    :func:`rasterize_experts`)."""
    N = means.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or log_scales.shape != (N, 3) or opacity_logits.shape != (N,):
        raise ValueError(
            f"shape mismatch: means {tuple(means.shape)}, quats {tuple(quats.shape)}, "
            f"log_scales {tuple(log_scales.shape)}, opacity_logits {tuple(opacity_logits.shape)} (want N x 3/4/3, N)"
        )
    if expert_ids.shape != (N,) or expert_ids.dtype.is_floating_point:
        raise ValueError(f"expert_ids must be an integer [N] tensor, got {expert_ids.dtype} {tuple(expert_ids.shape)}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if N and (int(expert_ids.min()) < 0 or int(expert_ids.max()) >= num_experts):
        raise ValueError(f"expert_ids must lie in [0, {num_experts})")
    name = resolve_backend(backend, means.device)
    ids = expert_ids.long()
    opac = torch.sigmoid(opacity_logits)
    if name == "cuda":
        rgb = eval_colors(means, colors, camera, sh_degree)
        return PreparedExperts(camera, ids, num_experts, name, opac, rgb, gaussians=(means, quats, log_scales))
    proj, rgb = project_and_color(means, quats, log_scales, colors, camera, sh_degree=sh_degree, backend=name)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, camera.width, camera.height, backend=name)
    return PreparedExperts(camera, ids, num_experts, name, opac, rgb, proj.means2d, proj.conics, proj.depths,
                           proj.radii, bins)


def composite_experts(
    prep: PreparedExperts,
    *,
    extras: Tensor | None = None,  # [N, C]
    background: Tensor | None = None,  # [3]
    weights: "SplatWeights | None" = None,
) -> ExpertsRenderOutput:
    """Composite prepared experts: one image per expert (see :func:`rasterize_experts`).

    Args:
        weights: ``prep``'s compositing weights (:func:`splat_weights`): composite by one sparse
            product instead of the kernel (the same images, a few times faster; differentiable
            w.r.t. the colours and ``extras`` only, not the projection).
    """
    N, K, cam = prep.rgb.shape[0], prep.num_experts, prep.camera
    if extras is None:
        extras = prep.rgb.new_zeros(N, 0)
    if extras.dim() != 2 or extras.shape[0] != N:
        raise ValueError(f"extras must be [N, C], got {tuple(extras.shape)}")
    bg = background_or_none(background, prep.rgb)
    meta = {"expert_ids": prep.expert_ids, "num_experts": K, "width": cam.width, "height": cam.height,
            "backend": prep.backend}
    if prep.backend == "cuda":
        from ._cuda import rasterize_cuda

        means, quats, log_scales = prep.gaussians
        parts = []
        for k in range(K):
            sel = torch.nonzero(prep.expert_ids == k).squeeze(1)
            parts.append(rasterize_cuda(means[sel], quats[sel], log_scales[sel], prep.opacities[sel], prep.rgb[sel],
                                        extras[sel], cam))
        feats, alpha, depth_acc = (torch.stack([p[j] for p in parts]) for j in range(3))
        color_acc, extras_img = feats[..., :3], feats[..., 3:]
        meta.update(means2d=[p[3] for p in parts], radii=[p[4] for p in parts], depths=[p[5] for p in parts])
    else:
        features = torch.cat((prep.rgb, prep.depths[:, None], extras), dim=-1)
        args = (prep.means2d, prep.conics, prep.opacities, features, prep.bins, cam.width, cam.height)
        if weights is not None:
            out = weights.splat(torch.cat((features, features.new_ones(N, 1)), dim=-1))
            out, alpha = out[..., :-1], out[..., -1]  # alpha = sum_i alpha_i T_i = 1 - T_final
        elif prep.backend == "torch":
            out, alpha = composite_torch(*args, expert_ids=prep.expert_ids, num_experts=K)
        else:
            from ._cpu import composite_cpu

            out, alpha = composite_cpu(*args, expert_ids=prep.expert_ids, num_experts=K)
        color_acc, depth_acc, extras_img = out[..., :3], out[..., 3], out[..., 4:]
        if prep.means2d.requires_grad:
            prep.means2d.retain_grad()
        meta.update(means2d=prep.means2d, radii=prep.radii, depths=prep.depths)
    return ExpertsRenderOutput(color=blend_background(color_acc, alpha, bg), alpha=alpha, depth_acc=depth_acc,
                               extras=extras_img, meta=meta)


def rasterize_experts(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    log_scales: Tensor,  # [N, 3]
    opacity_logits: Tensor,  # [N]
    colors: Colors,  # [N, 3], [N, B, 3] SH coefficients, or those in two parts
    expert_ids: Tensor,  # [N] int
    num_experts: int,
    camera: Camera,
    *,
    sh_degree: int | None = None,
    extras: Tensor | None = None,  # [N, C]
    background: Tensor | None = None,  # [3]
    backend: Backend = "auto",
) -> ExpertsRenderOutput:
    """Render ``K`` experts' Gaussians in one pass, one image per expert.

    Equal to ``K`` :func:`~moegs.render.rasterize` calls on each expert's Gaussians (same
    arguments), with one projection, one binning and one compositing pass.

    Args:
        means, quats, log_scales, opacity_logits: ``[N, 3]``, ``[N, 4]``, ``[N, 3]``, ``[N]``, all experts'
            Gaussians concatenated (any order).
        colors: ``[N, 3]`` RGB or ``[N, B, 3]`` SH coefficients, also as two parts along the bands
            (:data:`~moegs.render.projection.Colors`, read in place). Experts of different SH degrees are
            rendered exactly by padding the lower-degree experts' coefficients with zero bands
            (``moegs.gaussians.concat_sets`` does so).
        expert_ids: ``[N]`` integer expert of each Gaussian, in ``[0, num_experts)``.
        num_experts: ``K >= 1`` (an expert may have no Gaussians: its images are empty).
        camera: pinhole camera; sh_degree: SH degree to evaluate (default: the highest ``B`` holds).
        extras: ``[N, C]`` extra per-Gaussian channels (e.g. each expert's gate values).
        background: ``[3]`` colour behind every expert (default black).
        backend: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"cuda"`` (``K`` gsplat passes).

    Returns:
        :class:`ExpertsRenderOutput`; every output is differentiable w.r.t. every input tensor.
    """
    prep = prepare_experts(means, quats, log_scales, opacity_logits, colors, expert_ids, num_experts, camera,
                           sh_degree=sh_degree, backend=backend)
    return composite_experts(prep, extras=extras, background=background)


class _Splat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, matrix, transpose):
        ctx.transpose = transpose
        return matrix @ values

    @staticmethod
    def backward(ctx, grad):
        return ctx.transpose @ grad.contiguous(), None, None


@dataclass
class SplatWeights:
    """The compositing weights ``w_i(p) = alpha_i T_i`` of prepared experts: ``[K * H * W, N]``.

    Row ``k * H * W + y * W + x`` holds expert ``k``'s weights at pixel ``(x, y)``, so splatting
    per-Gaussian values ``v`` ``[N, C]`` as extra channels (:func:`composite_experts`) is ``W @ v``.

    Attributes:
        matrix: sparse CSR ``[K * H * W, N]``; transpose: the same, transposed (for gradients).
        num_experts, height, width: the image stack's shape.
    """

    matrix: Tensor
    transpose: Tensor
    num_experts: int
    height: int
    width: int

    def splat(self, values: Tensor) -> Tensor:
        """``[K, H, W, C]`` maps of per-Gaussian ``values`` ``[N, C]``; differentiable w.r.t. ``values``."""
        if values.dim() != 2 or values.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"values must be [{self.matrix.shape[1]}, C], got {tuple(values.shape)}")
        out = _Splat.apply(values.to(self.matrix.dtype).contiguous(), self.matrix, self.transpose)
        return out.view(self.num_experts, self.height, self.width, values.shape[1])

    def nbytes(self) -> int:
        """Bytes held (for cache budgets)."""
        return sum(t.numel() * t.element_size() for m in (self.matrix, self.transpose)
                   for t in (m.crow_indices(), m.col_indices(), m.values()))


def splat_weights(prep: PreparedExperts) -> SplatWeights | None:
    """The compositing weights of ``prep`` (:class:`SplatWeights`), or ``None`` for backends that
    do not expose them (``torch``, ``cuda``: composite the values with :func:`composite_experts`)."""
    if prep.backend != "cpu":
        return None
    from ._cpu import composite_weights_cpu

    cam, K, N = prep.camera, prep.num_experts, prep.rgb.shape[0]
    crow, col, val, tcrow, tcol, tval = composite_weights_cpu(
        prep.means2d, prep.conics, prep.opacities, prep.bins, cam.width, cam.height, expert_ids=prep.expert_ids,
        num_experts=K)
    R = K * cam.height * cam.width
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(crow, col, val, (R, N), check_invariants=False)
        transpose = torch.sparse_csr_tensor(tcrow, tcol, tval, (N, R), check_invariants=False)
    return SplatWeights(matrix, transpose, K, cam.height, cam.width)
