"""The study's Siamese network with VGG16's last convolutional block fine-tuned, not only a head.

The Siamese network passes both photos of a pair through two branches that share one set of weights, and
pulls similar pairs together and pushes dissimilar ones apart with the contrastive loss. Sharing the
weights means the two branches are one network applied twice; so a batch of photos through that one
network, with the contrastive loss over every pair the batch holds, *is* the two-branch model, trained
on all those pairs at once. That is what this preset runs, on the tuned-encoder trainer: VGG16's conv1-4
stay frozen and their output (pool4, 512 x 14 x 14) is cached once, conv5_1-conv5_3 learn, then the
study's global max pooling and a dense layer to unit vectors. The result is a ``tuned:OUT`` encoder.

The cached-head variant (``clothsim train-siamese`` without ``--fine-tune conv5``) stays the fast one: a
head over conv5 maps computed once.
"""

from __future__ import annotations

from clothsim.defaults import (
    DEFAULT_CONV5_EMBEDDING_DIM,
    DEFAULT_CONV5_EPOCHS,
    DEFAULT_CONV5_PATIENCE,
    DEFAULT_SEED,
    DEFAULT_SIAMESE_LR,
    DEFAULT_TUNE_BATCH_SIZE,
    DEFAULT_TUNE_M,
)
from clothsim.training.tuned_trainer import TuneConfig

CONV5_LAYERS = 3  # conv5_1, conv5_2, conv5_3 (each with its ReLU; pool5 after the last)


def siamese_conv5_config(*, embedding_dim: int = DEFAULT_CONV5_EMBEDDING_DIM, epochs: int = DEFAULT_CONV5_EPOCHS,
                         patience: int = DEFAULT_CONV5_PATIENCE, views: int = 1, batch_size: int = DEFAULT_TUNE_BATCH_SIZE,
                         m: int = DEFAULT_TUNE_M, lr: float = DEFAULT_SIAMESE_LR, seed: int = DEFAULT_SEED) -> TuneConfig:
    """Settings of the conv5 fine-tuning (the defaults are those that did best in the runs docs/training.md reports).

    One cached view per photo by default: the conv5 block dominates a step, and caching pool4 for more
    views costs a VGG16 forward pass each (about 9 minutes per view of 3,781 photos on two cores).
    """
    return TuneConfig(backbone="vgg16", train_layers=CONV5_LAYERS, cached_layers=CONV5_LAYERS, pooling="max",
                      embedding_dim=embedding_dim, loss="contrastive", views=views, epochs=epochs,
                      patience=patience, batch_size=batch_size, m=m, lr=lr, seed=seed)
