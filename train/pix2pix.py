"""pix2pix (Isola et al., 2017): a conditional GAN on paired images.

Reference defaults (pytorch-CycleGAN-and-pix2pix, ``--model pix2pix``): U-Net-256 generator (batch
norm, dropout), 70x70 PatchGAN (n_layers 3) that judges concat(input, output), vanilla GAN loss +
L1 weighted 100, discriminator loss halved, Adam 2e-4 (0.5, 0.999), 286 -> random crop 256 + flip,
batch size 1, 100 epochs constant + 100 epochs linear decay.

One iteration (as the reference): fake_B = G(A); update D on (A, fake_B) vs (A, B); update G with
D frozen.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from frametrans.models.layers import init_weights
from frametrans.models.patchgan import PatchDiscriminator, PatchGANConfig
from frametrans.models.unet import UNetConfig, UNetGenerator
from frametrans.train.base import Amp, Method, adam, eval_mode, image_grid, seeded, set_requires_grad
from frametrans.train.datasets import Augment, PairedDataset, TrainDataset, data_path, find_pairs
from frametrans.train.losses import GANLoss, gradient_penalty
from frametrans.train.options import Pix2PixOptions


def build_data(o: Pix2PixOptions) -> Tuple[TrainDataset, List[Dict[str, torch.Tensor]], Optional[List[Dict[str, torch.Tensor]]]]:
    """(training data, fixed samples for the grids, held-out pairs for validation or None)."""
    augment = Augment(o.size, o.crop, o.flip, o.resize)
    root = data_path(o.data)
    if root is None:
        raise ValueError("no training data: give --data DIR (train/ with A|B images, or A/ + B/)")
    train = PairedDataset(find_pairs(root, "train"), augment, o.seed, o.direction)
    val_root = data_path(o.val_data)
    val_pairs = find_pairs(val_root or root, "val")
    if val_pairs is None and val_root is not None:
        val_pairs = find_pairs(val_root, "train")
    val = PairedDataset(val_pairs, augment, o.seed, o.direction).evaluation(o.val_count) if val_pairs else None
    samples = (val or train.evaluation(o.sample_count))[: o.sample_count]
    return train, samples, val


class Pix2Pix(Method):
    """Networks ``G`` (U-Net) and ``D`` (PatchGAN); exports ``G.safetensors``."""

    name = "pix2pix"

    options: Pix2PixOptions

    def __init__(self, options: Pix2PixOptions, device: torch.device, amp: Amp) -> None:
        super().__init__(options, device, amp)
        o = options  # the crop fits the networks (frametrans.train.sizes.check_fit, at resolution)
        g = UNetGenerator(UNetConfig(3, 3, num_downs=o.num_downs, ngf=o.ngf, norm=o.norm, dropout=o.dropout))
        d = PatchDiscriminator(PatchGANConfig(in_channels=6, ndf=o.ndf, n_layers=o.n_layers_d, norm=o.norm))
        for i, net in enumerate((g, d)):
            init_weights(net, o.init, o.init_gain, generator=seeded(o.seed, 10, i))
        self.nets = {"G": g.to(device), "D": d.to(device)}
        self.optimizers = {
            "G": adam(g.parameters(), o.lr, o.beta1, o.beta2),
            "D": adam(d.parameters(), o.lr, o.beta1, o.beta2),
        }
        self.rngs = {"gp": seeded(o.seed, 11)}
        self.exports = {"G": "G.safetensors"}
        self.gan = GANLoss(o.gan_mode)

    def step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        o, amp = self.options, self.amp
        G, D = self.nets["G"], self.nets["D"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        real_a, real_b = batch["A"], batch["B"]  # [B, 3, H, W] in [-1, 1]
        with amp.autocast():
            fake_b = G(real_a)

        # discriminator: real pairs -> 1, fake pairs -> 0, halved
        set_requires_grad([D], True)
        opt_d.zero_grad(set_to_none=True)
        with amp.autocast():
            pred_fake = D(torch.cat([real_a, fake_b.detach()], 1))
            pred_real = D(torch.cat([real_a, real_b], 1))
        loss_d_fake = self.gan(pred_fake, False)
        loss_d_real = self.gan(pred_real, True)
        loss_d = (loss_d_fake + loss_d_real) * 0.5
        losses = {"D_real": loss_d_real, "D_fake": loss_d_fake}
        if self.gan.needs_gradient_penalty:
            gp = gradient_penalty(D, torch.cat([real_a, real_b], 1), torch.cat([real_a, fake_b], 1),
                                  weight=o.gp_weight, generator=self.rngs["gp"], shard=self.shard)
            loss_d = loss_d + gp
            losses["D_GP"] = gp
        amp.backward(loss_d)
        amp.step(opt_d)

        # generator: fool D, stay close to B
        set_requires_grad([D], False)
        opt_g.zero_grad(set_to_none=True)
        with amp.autocast():
            pred = D(torch.cat([real_a, fake_b], 1))
        loss_g_gan = self.gan(pred, True, for_discriminator=False)
        loss_g_l1 = F.l1_loss(fake_b.float(), real_b) * o.lambda_l1
        amp.backward(loss_g_gan + loss_g_l1)
        amp.step(opt_g)
        amp.update()
        set_requires_grad([D], True)
        losses.update(G_GAN=loss_g_gan, G_L1=loss_g_l1)
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def _translate(self, a: torch.Tensor) -> torch.Tensor:
        g = self.generators()["G"]
        with eval_mode([g]):
            return g(a.to(self.device)).float()

    def samples(self, batch: Dict[str, torch.Tensor]) -> np.ndarray:
        fake = self._translate(batch["A"])
        return image_grid([[a, f, b] for a, f, b in zip(batch["A"], fake, batch["B"])])

    def validate(self, items: List[Dict[str, torch.Tensor]], batch_size: int) -> Optional[Dict[str, float]]:
        return paired_metrics(self._translate, items, batch_size, "A", "B")


def paired_metrics(translate: Any, items: List[Dict[str, torch.Tensor]], batch_size: int,
                   src: str, dst: str) -> Dict[str, float]:
    """Mean L1, PSNR (dB) and SSIM of ``translate(items[src])`` against ``items[dst]``, both mapped
    from [-1, 1] to [0, 1]. PSNR of identical images (inf) is capped at 100 dB."""
    from frametrans.metrics import psnr, ssim

    l1, ps, ss = [], [], []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        x = torch.stack([it[src] for it in chunk])
        y = (torch.stack([it[dst] for it in chunk]) + 1) / 2
        pred = ((translate(x).cpu() + 1) / 2).clamp(0, 1)
        l1.append((pred - y).abs().flatten(1).mean(1))
        ps.append(psnr(pred, y).clamp(max=100.0))
        ss.append(ssim(pred, y, data_range=1.0))
    return {"l1": float(torch.cat(l1).mean()), "psnr": float(torch.cat(ps).mean()),
            "ssim": float(torch.cat(ss).mean())}
