"""Shared parts of the inversion-based methods (FREE, PURER, BiDf-MKD): the image generator,
the inversion and distillation losses, the generated-image augmentation and the memory bank."""
