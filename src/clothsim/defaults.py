"""Defaults that the CLI's parser needs; kept in a module that imports nothing heavy."""

DEFAULT_ENCODER = "efficientnet_lite0"
# "auto" picks the fastest runtime that works on this machine (see clothsim.runtimes).
DEFAULT_RUNTIME = "auto"
DEFAULT_INDEX_BACKEND = "exact"
DEFAULT_ENGINE = "local"
# What `clothsim evaluate` compares when --encoders is not given: the study's backbones and the default.
DEFAULT_EVALUATE_ENCODERS = ("vgg16", "resnet50", "inception_v3", "efficientnet_lite0")
