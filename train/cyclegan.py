"""CycleGAN (Zhu et al., 2017): two generators and two discriminators on unpaired images.

Reference defaults (pytorch-CycleGAN-and-pix2pix, ``--model cycle_gan``): two ResNet-9 generators
(instance norm; the released models were trained without dropout, so no dropout here), two 70x70
PatchGANs (instance norm), LSGAN, cycle loss 10 in both directions, identity loss 0.5 x 10, image
pools of 50 fakes, Adam 2e-4 (0.5, 0.999), 286 -> crop 256 + flip, batch 1, 100 + 100 epochs.

Naming as the reference: G_A maps A -> B and is judged by D_A (fakes of B vs real B); G_B maps
B -> A and is judged by D_B. Exports ``G_A.safetensors`` (A -> B) and ``G_B.safetensors`` (B -> A).
"""

from __future__ import annotations

import itertools
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from frametrans.models.layers import init_weights
from frametrans.models.patchgan import PatchDiscriminator, PatchGANConfig
from frametrans.models.resnet import ResnetConfig, ResnetGenerator
from frametrans.train.base import Amp, Method, adam, eval_mode, image_grid, seeded, set_requires_grad
from frametrans.train.losses import GANLoss, gradient_penalty
from frametrans.train.options import CycleGANOptions
from frametrans.train.pool import ImagePool


class CycleGAN(Method):
    """Networks ``G_A``, ``G_B`` (ResNet), ``D_A``, ``D_B`` (PatchGAN); pools of fakes."""

    name = "cyclegan"

    options: CycleGANOptions

    def __init__(self, options: CycleGANOptions, device: torch.device, amp: Amp) -> None:
        super().__init__(options, device, amp)
        o = options  # the crop fits the networks (frametrans.train.sizes.check_fit, at resolution)
        g_cfg = ResnetConfig(3, 3, ngf=o.ngf, n_blocks=o.n_blocks, norm=o.norm, dropout=o.dropout,
                             upsample=o.upsample)
        d_cfg = PatchGANConfig(in_channels=3, ndf=o.ndf, n_layers=o.n_layers_d, norm=o.norm)
        nets = {"G_A": ResnetGenerator(g_cfg), "G_B": ResnetGenerator(g_cfg),
                "D_A": PatchDiscriminator(d_cfg), "D_B": PatchDiscriminator(d_cfg)}
        for i, net in enumerate(nets.values()):
            init_weights(net, o.init, o.init_gain, generator=seeded(o.seed, 20, i))
        self.nets = {k: v.to(device) for k, v in nets.items()}
        n = self.nets
        self.optimizers = {
            "G": adam(itertools.chain(n["G_A"].parameters(), n["G_B"].parameters()), o.lr, o.beta1, o.beta2),
            "D": adam(itertools.chain(n["D_A"].parameters(), n["D_B"].parameters()), o.lr, o.beta1, o.beta2),
        }
        self.pools = {"fake_A": ImagePool(o.pool_size, seeded(o.seed, 21, 0)),
                      "fake_B": ImagePool(o.pool_size, seeded(o.seed, 21, 1))}
        self.rngs = {"gp": seeded(o.seed, 22)}
        self.exports = {"G_A": "G_A.safetensors", "G_B": "G_B.safetensors"}
        self.gan = GANLoss(o.gan_mode)

    def _d_loss(self, D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        with self.amp.autocast():
            pred_real, pred_fake = D(real), D(fake.detach())
        loss = (self.gan(pred_real, True) + self.gan(pred_fake, False)) * 0.5
        gp = None
        if self.gan.needs_gradient_penalty:
            gp = gradient_penalty(D, real, fake, weight=self.options.gp_weight, generator=self.rngs["gp"],
                                  shard=self.shard)
            loss = loss + gp
        return loss, gp

    def _pooled(self, name: str, fakes: torch.Tensor) -> torch.Tensor:
        """Fakes for the discriminator from the pool (detached). With DDP the pool takes the global
        batch of fakes (gathered in rank order) on every rank, with the same draws everywhere, and
        each rank keeps its slice: the pool's content and choices match a single process."""
        return self.shard.local(self.pools[name].query(self.shard.gather(fakes)))

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        o, amp, n = self.options, self.amp, self.nets
        real_a, real_b = batch["A"], batch["B"]  # [B, 3, H, W] in [-1, 1]
        lam_a = lam_b = o.lambda_cycle
        with amp.autocast():
            fake_b = n["G_A"](real_a)
            rec_a = n["G_B"](fake_b)
            fake_a = n["G_B"](real_b)
            rec_b = n["G_A"](fake_a)

        # generators, with the discriminators frozen
        set_requires_grad([n["D_A"], n["D_B"]], False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        losses: Dict[str, torch.Tensor] = {}
        if o.lambda_identity > 0:
            with amp.autocast():
                idt_a = n["G_A"](real_b)  # G_A should leave B images alone
                idt_b = n["G_B"](real_a)
            losses["idt_A"] = F.l1_loss(idt_a.float(), real_b) * lam_b * o.lambda_identity
            losses["idt_B"] = F.l1_loss(idt_b.float(), real_a) * lam_a * o.lambda_identity
        with amp.autocast():
            pred_b, pred_a = n["D_A"](fake_b), n["D_B"](fake_a)
        losses["G_A"] = self.gan(pred_b, True, for_discriminator=False)
        losses["G_B"] = self.gan(pred_a, True, for_discriminator=False)
        losses["cycle_A"] = F.l1_loss(rec_a.float(), real_a) * lam_a
        losses["cycle_B"] = F.l1_loss(rec_b.float(), real_b) * lam_b
        amp.backward(sum(losses.values()))
        amp.step(self.optimizers["G"])

        # discriminators, on a mix of new and pooled fakes
        set_requires_grad([n["D_A"], n["D_B"]], True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d_a, gp_a = self._d_loss(n["D_A"], real_b, self._pooled("fake_B", fake_b))
        loss_d_b, gp_b = self._d_loss(n["D_B"], real_a, self._pooled("fake_A", fake_a))
        amp.backward(loss_d_a + loss_d_b)
        amp.step(self.optimizers["D"])
        amp.update()
        losses["D_A"], losses["D_B"] = loss_d_a, loss_d_b
        if gp_a is not None:
            losses["D_GP"] = gp_a + gp_b
        return {k: v.detach() for k, v in losses.items()}

    def samples(self, batch: Dict[str, torch.Tensor]) -> np.ndarray:
        """Rows: real A | fake B | rec A | real B | fake A | rec B."""
        g = self.generators()
        with torch.no_grad(), eval_mode(g.values()):
            a, b = batch["A"].to(self.device), batch["B"].to(self.device)
            fake_b, fake_a = g["G_A"](a), g["G_B"](b)
            rec_a, rec_b = g["G_B"](fake_b), g["G_A"](fake_a)
        cols = (a, fake_b, rec_a, b, fake_a, rec_b)
        return image_grid([list(row) for row in zip(*cols)])

