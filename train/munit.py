"""MUNIT (Huang et al., 2018): multimodal unpaired translation with content and style codes.

The upstream trainer (NVlabs/MUNIT ``MUNIT_Trainer``, edges2shoes config) in one iteration:

    discriminators (first):  x_ba = G_a.dec(c_b, s_a), x_ab = G_b.dec(c_a, s_b) with random styles;
                             LSGAN over 3 scales, weight gan_w
    generators:              image reconstruction      10 * (|x_a' - x_a| + |x_b' - x_b|)
                             style reconstruction       1 * |s_a~ - s_a| + |s_b~ - s_b|
                             content reconstruction     1 * |c_b~ - c_b| + |c_a~ - c_a|
                             explicit cycle (x_aba)     cyc_w (0 by default, as edges2shoes)
                             adversarial                gan_w (1)
                             VGG perceptual (x_ba vs x_b, x_ab vs x_a), only with --vgg-weights
    Adam 1e-4 (0.5, 0.999), weight decay 1e-4, lr halved every 100k iterations, 1M iterations,
    batch 1, short side resized to 256, random 256 crop + flip.

Random style codes come from a ``torch.Generator`` owned by the method (saved with the state).
Exports ``munit.safetensors`` (both auto-encoders, registry name ``munit``).
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frametrans.models.munit import MUNIT, MultiScaleDiscriminator, MUNITConfig, MUNITDiscriminatorConfig
from frametrans.train.base import Amp, Method, adam, eval_mode, image_grid, seeded, set_requires_grad
from frametrans.train.losses import GANLoss, VGGPerceptualLoss, gradient_penalty
from frametrans.train.options import MUNITOptions


class MUNITMethod(Method):
    """Networks ``gen`` (MUNIT: gen_a, gen_b), ``dis_a``, ``dis_b`` (multi-scale)."""

    name = "munit"

    options: MUNITOptions

    def __init__(self, options: MUNITOptions, device: torch.device, amp: Amp) -> None:
        super().__init__(options, device, amp)
        o = options  # the crop fits the networks (frametrans.train.sizes.check_fit, at resolution)
        gen = MUNIT(MUNITConfig(3, dim=o.dim, style_dim=o.style_dim, n_downsample=o.n_downsample,
                                n_res=o.n_res, mlp_dim=o.mlp_dim, activ=o.activ, pad_type=o.pad_type))
        d_cfg = MUNITDiscriminatorConfig(3, dim=o.dis_dim, n_layer=o.dis_layers, num_scales=o.dis_scales,
                                         norm=o.dis_norm, activ="lrelu", pad_type=o.pad_type)
        self.nets = {"gen": gen.to(device), "dis_a": MultiScaleDiscriminator(d_cfg).to(device),
                     "dis_b": MultiScaleDiscriminator(d_cfg).to(device)}
        dis_params = itertools.chain(self.nets["dis_a"].parameters(), self.nets["dis_b"].parameters())
        self.optimizers = {
            "gen": adam(gen.parameters(), o.lr, o.beta1, o.beta2, o.weight_decay),
            "dis": adam(dis_params, o.lr, o.beta1, o.beta2, o.weight_decay),
        }
        self.rngs = {"style": seeded(o.seed, 30), "gp": seeded(o.seed, 31)}
        self.exports = {"gen": "munit.safetensors"}
        self.gan = GANLoss(o.gan_mode)
        self.vgg = VGGPerceptualLoss(o.vgg_weights).to(device) if o.vgg_weights else None

    def compile_units(self) -> List[nn.Module]:
        """The step calls the generators' encoders, decoders and style MLPs directly, not their
        ``forward``: those, and the discriminators."""
        gen: MUNIT = self.nets["gen"]  # type: ignore[assignment]
        parts = [m for g in (gen.gen_a, gen.gen_b) for m in (g.enc_style, g.enc_content, g.dec, g.mlp)]
        return parts + [self.nets["dis_a"], self.nets["dis_b"]]

    def _styles(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Random styles for a local batch of ``batch``: drawn for the global batch (DDP), sliced."""
        gen: MUNIT = self.nets["gen"]  # type: ignore[assignment]
        n = batch * self.shard.world
        s_a = gen.sample_style(n, generator=self.rngs["style"], device=self.device)
        s_b = gen.sample_style(n, generator=self.rngs["style"], device=self.device)
        return self.shard.local(s_a), self.shard.local(s_b)

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        o, amp = self.options, self.amp
        gen = self.nets["gen"]
        ga, gb = gen.gen_a, gen.gen_b
        dis_a, dis_b = self.nets["dis_a"], self.nets["dis_b"]
        x_a, x_b = batch["A"], batch["B"]  # [B, 3, H, W] in [-1, 1]
        losses: Dict[str, torch.Tensor] = {}

        # discriminators
        set_requires_grad([dis_a, dis_b], True)
        self.optimizers["dis"].zero_grad(set_to_none=True)
        s_a, s_b = self._styles(x_a.shape[0])
        with amp.autocast():
            with torch.no_grad():
                x_ba = ga.decode(gb.encode_content(x_b), s_a)
                x_ab = gb.decode(ga.encode_content(x_a), s_b)
            out_fake_a, out_real_a = dis_a(x_ba), dis_a(x_a)
            out_fake_b, out_real_b = dis_b(x_ab), dis_b(x_b)
        loss_dis_a = self.gan(out_fake_a, False) + self.gan(out_real_a, True)
        loss_dis_b = self.gan(out_fake_b, False) + self.gan(out_real_b, True)
        loss_dis = o.gan_weight * (loss_dis_a + loss_dis_b)
        if self.gan.needs_gradient_penalty:
            gp = (gradient_penalty(dis_a, x_a, x_ba, weight=o.gp_weight, generator=self.rngs["gp"], shard=self.shard)
                  + gradient_penalty(dis_b, x_b, x_ab, weight=o.gp_weight, generator=self.rngs["gp"], shard=self.shard))
            loss_dis = loss_dis + gp
            losses["D_GP"] = gp
        amp.backward(loss_dis)
        amp.step(self.optimizers["dis"])
        losses["D_a"], losses["D_b"] = loss_dis_a, loss_dis_b

        # generators
        set_requires_grad([dis_a, dis_b], False)
        self.optimizers["gen"].zero_grad(set_to_none=True)
        s_a, s_b = self._styles(x_a.shape[0])
        with amp.autocast():
            c_a, s_a_prime = ga.encode(x_a)
            c_b, s_b_prime = gb.encode(x_b)
            x_a_recon, x_b_recon = ga.decode(c_a, s_a_prime), gb.decode(c_b, s_b_prime)
            x_ba, x_ab = ga.decode(c_b, s_a), gb.decode(c_a, s_b)
            c_b_recon, s_a_recon = ga.encode(x_ba)
            c_a_recon, s_b_recon = gb.encode(x_ab)
            adv_a, adv_b = dis_a(x_ba), dis_b(x_ab)
            if o.cyc_weight > 0:
                x_aba, x_bab = ga.decode(c_a_recon, s_a_prime), gb.decode(c_b_recon, s_b_prime)
        l1 = lambda x, y: F.l1_loss(x.float(), y.float())  # noqa: E731
        losses["recon_x_a"], losses["recon_x_b"] = l1(x_a_recon, x_a), l1(x_b_recon, x_b)
        losses["recon_s_a"], losses["recon_s_b"] = l1(s_a_recon, s_a), l1(s_b_recon, s_b)
        losses["recon_c_a"], losses["recon_c_b"] = l1(c_a_recon, c_a), l1(c_b_recon, c_b)
        losses["G_a"] = self.gan(adv_a, True, for_discriminator=False)
        losses["G_b"] = self.gan(adv_b, True, for_discriminator=False)
        total = (o.gan_weight * (losses["G_a"] + losses["G_b"])
                 + o.recon_x_weight * (losses["recon_x_a"] + losses["recon_x_b"])
                 + o.recon_s_weight * (losses["recon_s_a"] + losses["recon_s_b"])
                 + o.recon_c_weight * (losses["recon_c_a"] + losses["recon_c_b"]))
        if o.cyc_weight > 0:
            losses["cyc_a"], losses["cyc_b"] = l1(x_aba, x_a), l1(x_bab, x_b)
            total = total + o.cyc_weight * (losses["cyc_a"] + losses["cyc_b"])
        if self.vgg is not None:
            with amp.autocast():
                losses["vgg_a"], losses["vgg_b"] = self.vgg(x_ba, x_b), self.vgg(x_ab, x_a)
            total = total + o.vgg_weight * (losses["vgg_a"] + losses["vgg_b"])
        amp.backward(total)
        amp.step(self.optimizers["gen"])
        amp.update()
        set_requires_grad([dis_a, dis_b], True)
        losses["G_total"] = total
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def samples(self, batch: Dict[str, torch.Tensor]) -> np.ndarray:
        """Rows: x_a | recon | a->b (2 fixed styles) | x_b | recon | b->a (2 fixed styles)."""
        gen: MUNIT = self.generators()["gen"]  # type: ignore[assignment]
        x_a, x_b = batch["A"].to(self.device), batch["B"].to(self.device)
        g = torch.Generator().manual_seed(0)  # the same two styles in every grid
        styles = [gen.sample_style(1, generator=g, device=self.device) for _ in range(2)]
        with eval_mode([gen]):
            cols = [x_a, gen.gen_a(x_a)] + [gen.translate(x_a, s, "a2b") for s in styles]
            cols += [x_b, gen.gen_b(x_b)] + [gen.translate(x_b, s, "b2a") for s in styles]
        return image_grid([list(row) for row in zip(*cols)])
