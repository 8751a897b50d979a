"""Importers for foreign checkpoints (pytorch-CycleGAN-and-pix2pix, MUNIT)."""
